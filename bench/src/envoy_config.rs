//! The benchmark's Envoy configuration: one Envoy, one listener per scenario, so every scenario
//! runs through the same process and build, and CPU per request is read from that process while
//! only one scenario is loaded.

use serde_json::{json, Value};
use std::path::Path;

/// A listener of the benchmark Envoy.
pub struct Listener {
    pub name: &'static str,
    /// The HTTP filters before the router, as YAML (indented for the filter list).
    pub filters: String,
    /// `direct_response` instead of the upstream.
    pub direct: bool,
    /// Per-route config for ext_authz (tier), when the native filter is used.
    pub ext_authz_tier: Option<&'static str>,
}

fn wasm_filter(wasm: &str, config: &Value) -> String {
    wasm_module("jwt_authz", wasm, config)
}

/// The native filter (`libauthz_native.so`, found through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`)
/// with `config`: one core per listener's filter configuration, shared by both workers.
fn native_filter(config: &Value) -> String {
    let value = serde_json::to_string(&config.to_string()).unwrap_or_default();
    format!(
        r#"
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: authz_native }}
              filter_name: jwt_authz
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {value}"#
    )
}

/// The empty dynamic module (`bench/noop-native`, `libnoop_native.so`, beside the native
/// filter's).
fn noop_native() -> String {
    r#"
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: noop_native }
              filter_name: noop"#
        .to_owned()
}

/// The empty filter (`bench/noop-filter`), next to the authorization filter's `.wasm`.
pub fn noop_filter(wasm: &str) -> String {
    let noop = wasm.replace("wasm_filter.wasm", "noop_filter.wasm");
    wasm_module("noop", &noop, &json!({}))
}

fn wasm_module(id: &str, wasm: &str, config: &Value) -> String {
    let value = serde_json::to_string(&config.to_string()).unwrap_or_default();
    format!(
        r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {id}
                root_id: {id}
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: {id}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{wasm}" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {value}"#
    )
}

fn jwt_authn(idp_port: u16, cache: bool) -> String {
    let cache_config = if cache {
        "\n                  jwt_cache_config: { jwt_cache_size: 1000 }"
    } else {
        ""
    };
    format!(
        r#"
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                dev:
                  issuer: https://dev-idp.local
                  audiences: [demo-api]
                  forward: false
                  remote_jwks:
                    http_uri: {{ uri: "http://127.0.0.1:{idp_port}/.well-known/jwks.json", cluster: dev_idp, timeout: 2s }}
                    cache_duration: 300s{cache_config}
              rules:
              - match: {{ prefix: / }}
                requires: {{ provider_name: dev }}"#
    )
}

/// Envoy's native ext_authz filter asking the gRPC cluster `cluster`, failing closed.
fn ext_authz_filter(cluster: &str) -> String {
    format!(
        r#"
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: {{ envoy_grpc: {{ cluster_name: {cluster} }}, timeout: 2s }}
              failure_mode_allow: false
              status_on_error: {{ code: ServiceUnavailable }}"#
    )
}

/// An ext_authz gRPC server of the user's (OPA-Envoy, Authorino, …) measured beside ours:
/// `BENCH_EXTERNAL_EXT_AUTHZ=host:port`, with `BENCH_EXTERNAL_EXT_AUTHZ_BEARER` and
/// `BENCH_EXTERNAL_EXT_AUTHZ_PID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    pub host: String,
    pub port: u16,
    /// The bearer token it accepts (None: the bench's dev IdP JWT).
    pub bearer: Option<String>,
    /// Its process id, to read its CPU (0: not read).
    pub pid: u32,
}

/// A gRPC (HTTP/2) cluster of one endpoint; `discovery` is `STATIC` or `STRICT_DNS` (IPv4
/// first: `localhost` must not land on `::1` when the server listens on 127.0.0.1).
fn grpc_cluster(name: &str, discovery: &str, host: &str, port: u16) -> String {
    format!(
        r#"  - name: {name}
    type: {discovery}
    dns_lookup_family: V4_PREFERRED
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: "{host}", port_value: {port} }} }} }} }}] }}] }}
"#
    )
}

/// The listener (and scenario) that asks the external server.
pub const EXTERNAL_LISTENER: &str = "external_ext_authz";

impl External {
    /// `host:port` (a name or an IPv4 address; Envoy resolves names).
    pub fn parse(value: &str) -> Result<External, String> {
        let (host, port) = value.rsplit_once(':').ok_or_else(|| {
            format!("BENCH_EXTERNAL_EXT_AUTHZ={value:?}: expected host:port (e.g. 127.0.0.1:9191)")
        })?;
        let port =
            port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("BENCH_EXTERNAL_EXT_AUTHZ={value:?}: bad port (1 to 65535)")
            })?;
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(plain) {
            return Err(format!(
                "BENCH_EXTERNAL_EXT_AUTHZ={value:?}: bad host (a name or an IPv4 address: letters, digits, '.', '-', '_'; no scheme, no IPv6)"
            ));
        }
        Ok(External {
            host: host.to_owned(),
            port,
            bearer: None,
            pid: 0,
        })
    }

    /// The external server from the environment, every setting checked before anything
    /// starts: None when `BENCH_EXTERNAL_EXT_AUTHZ` is unset or empty.
    pub fn from_env() -> Result<Option<External>, String> {
        let address = match std::env::var("BENCH_EXTERNAL_EXT_AUTHZ") {
            Ok(v) if !v.trim().is_empty() => v,
            _ => return Ok(None),
        };
        let mut external = External::parse(address.trim())?;
        external.bearer = std::env::var("BENCH_EXTERNAL_EXT_AUTHZ_BEARER")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        if let Some(token) = &external.bearer {
            if hyper::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                return Err(
                    "BENCH_EXTERNAL_EXT_AUTHZ_BEARER: not a valid header value (control characters?)"
                        .into(),
                );
            }
        }
        if let Ok(value) = std::env::var("BENCH_EXTERNAL_EXT_AUTHZ_PID") {
            // A wrong pid would report the server's CPU as zero.
            external.pid = value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|pid| *pid > 0 && Path::new(&format!("/proc/{pid}/stat")).exists())
                .ok_or_else(|| {
                    format!(
                        "BENCH_EXTERNAL_EXT_AUTHZ_PID={value:?}: not the id of a running process"
                    )
                })?;
        }
        Ok(Some(external))
    }

    /// `host:port`, as the report names it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Its listener: native ext_authz to it, nothing of ours on the path.
    pub fn listener(&self) -> Listener {
        Listener {
            name: EXTERNAL_LISTENER,
            filters: ext_authz_filter(EXTERNAL_LISTENER),
            direct: false,
            ext_authz_tier: None,
        }
    }

    /// Its cluster (resolved by DNS when a name).
    fn cluster(&self) -> String {
        grpc_cluster(EXTERNAL_LISTENER, "STRICT_DNS", &self.host, self.port)
    }
}

/// The filter's plugin configuration for the benchmark: one provider, `/` is `authenticated`
/// with scope `read`, `/admin/` is `privileged`.
pub fn plugin(jwt_ttl_ms: u64, privileged_cache_ms: u64, epochs_token: &str) -> Value {
    json!({
        "providers": [{"issuer": "https://dev-idp.local", "audiences": ["demo-api"],
                        "jwks": {"remote": {"cluster": "dev_idp", "path": "/.well-known/jwks.json"}}}],
        "routes": [{"name": "admin", "match": {"prefix": "/admin/"}, "tier": "privileged"}],
        "default": {"tier": "authenticated", "require": {"scopes": ["read"]}},
        "server": {"cluster": "ext_authz", "timeout_ms": 2000, "epochs_cluster": "ext_authz_admin",
                   "epochs_token": epochs_token, "poll_interval_ms": 250},
        "cache": {"jwt_ttl_ms": jwt_ttl_ms, "tier_max_ms": {"privileged": privileged_cache_ms}}
    })
}

/// The plugin of the standard-write scenarios: `/orders/` is `standard_write`, decided
/// locally, or (`fresh_cache_ms`) by the server with a short proxy cache.
fn write_plugin(epochs_token: &str, fresh_cache_ms: Option<u64>) -> Value {
    let mut p = plugin(60_000, 5_000, epochs_token);
    let mut route =
        json!({"name": "orders", "match": {"prefix": "/orders/"}, "tier": "standard_write"});
    if let Some(ms) = fresh_cache_ms {
        route["fresh_cache_ms"] = json!(ms);
    }
    if let Some(routes) = p["routes"].as_array_mut() {
        routes.push(route);
    }
    p
}

/// The plugin of the background scenario: `/news/` is an `authenticated` read answered from
/// the JWT and checked by the server after the answer, once per token per second per worker.
fn background_plugin(epochs_token: &str) -> Value {
    let mut p = plugin(60_000, 5_000, epochs_token);
    if let Some(routes) = p["routes"].as_array_mut() {
        routes.push(
            json!({"name": "news", "match": {"prefix": "/news/", "methods": ["GET"]},
                           "tier": "authenticated", "require": {"scopes": ["read"]},
                           "background_check_ms": 1000}),
        );
    }
    p
}

/// The fresh write route's proxy cache in the benchmark (ms).
pub const FRESH_CACHE_MS: u64 = 1_000;

/// Entry cap of the flood listener's caches (per worker).
pub const FLOOD_CAP: u64 = 500;

/// The plugin of the memory-flood listener: small caches, to show the caps hold.
fn flood_plugin(epochs_token: &str) -> Value {
    let mut p = plugin(60_000, 5_000, epochs_token);
    p["cache"]["max_entries"] = json!(FLOOD_CAP);
    p
}

/// The scenario listeners.
pub fn listeners(wasm: &str, idp_port: u16, epochs_token: &str) -> Vec<Listener> {
    let plain = |name, filters: String, direct| Listener {
        name,
        filters,
        direct,
        ext_authz_tier: None,
    };
    vec![
        plain("direct", String::new(), true),
        plain("proxy", String::new(), false),
        plain("wasm_noop", noop_filter(wasm), false),
        plain("native_noop", noop_native(), false),
        plain("jwt_authn", jwt_authn(idp_port, false), false),
        plain("jwt_authn_cached", jwt_authn(idp_port, true), false),
        plain(
            "filter_hot",
            wasm_filter(wasm, &plugin(60_000, 5_000, epochs_token)),
            false,
        ),
        plain(
            "filter_cold",
            wasm_filter(wasm, &plugin(0, 5_000, epochs_token)),
            false,
        ),
        plain(
            "filter_privileged_cached",
            wasm_filter(wasm, &plugin(60_000, 5_000, epochs_token)),
            false,
        ),
        plain(
            "native_hot",
            native_filter(&plugin(60_000, 5_000, epochs_token)),
            false,
        ),
        plain(
            "native_cold",
            native_filter(&plugin(0, 5_000, epochs_token)),
            false,
        ),
        plain(
            "native_privileged_cached",
            native_filter(&plugin(60_000, 5_000, epochs_token)),
            false,
        ),
        plain(
            "filter_privileged_uncached",
            wasm_filter(wasm, &plugin(60_000, 0, epochs_token)),
            false,
        ),
        plain(
            "filter_background",
            wasm_filter(wasm, &background_plugin(epochs_token)),
            false,
        ),
        plain(
            "filter_write_local",
            wasm_filter(wasm, &write_plugin(epochs_token, None)),
            false,
        ),
        plain(
            "filter_write_fresh",
            wasm_filter(wasm, &write_plugin(epochs_token, Some(FRESH_CACHE_MS))),
            false,
        ),
        plain(
            "filter_write_fresh_uncached",
            wasm_filter(wasm, &write_plugin(epochs_token, Some(0))),
            false,
        ),
        Listener {
            name: "native_ext_authz",
            filters: ext_authz_filter("ext_authz"),
            direct: false,
            ext_authz_tier: Some("privileged"),
        },
        plain(
            "filter_flood",
            wasm_filter(wasm, &flood_plugin(epochs_token)),
            false,
        ),
    ]
}

/// The whole Envoy YAML.
pub fn render(
    listeners: &[Listener],
    idp_port: u16,
    upstream_port: u16,
    authz_port: u16,
    authz_admin_port: u16,
    external: Option<&External>,
) -> String {
    let mut yaml = String::from("admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\nstatic_resources:\n  listeners:\n");
    for l in listeners {
        let route = if l.direct {
            "direct_response: { status: 200, body: { inline_string: \"ok\" } }"
        } else {
            "route: { cluster: upstream }"
        };
        let per_route = match l.ext_authz_tier {
            Some(tier) => format!(
                "\n                typed_per_filter_config:\n                  envoy.filters.http.ext_authz:\n                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute\n                    check_settings: {{ context_extensions: {{ tier: {tier} }} }}"
            ),
            None => String::new(),
        };
        yaml.push_str(&format!(
            r#"  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          normalize_path: true
          merge_slashes: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                {route}{per_route}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
            name = l.name,
            filters = l.filters,
        ));
    }
    yaml.push_str(&format!(
        r#"  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{ cluster_name: upstream, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }} }}] }}] }}
  - name: dev_idp
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{ cluster_name: dev_idp, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {idp_port} }} }} }} }}] }}] }}
{ext_authz}  - name: ext_authz_admin
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{ cluster_name: ext_authz_admin, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {authz_admin_port} }} }} }} }}] }}] }}
"#,
        ext_authz = grpc_cluster("ext_authz", "STATIC", "127.0.0.1", authz_port)
    ));
    if let Some(external) = external {
        yaml.push_str(&external.cluster());
    }
    yaml
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use ::tests::{
        get, listener_port, server_yaml, AuthzServerProcess, DevIdp, Echo, Envoy, AUDIENCE, ISSUER,
    };
    use serde_json::json;

    #[test]
    fn an_external_server_is_read_from_host_and_port_or_refused_with_a_reason() {
        assert_eq!(
            External::parse("opa.authz.svc:9191").unwrap(),
            External {
                host: "opa.authz.svc".into(),
                port: 9191,
                bearer: None,
                pid: 0,
            }
        );
        for (bad, why) in [
            ("9191", "expected host:port"),
            ("opa:", "bad port"),
            ("opa:0", "bad port"),
            ("opa:70000", "bad port"),
            (":9191", "bad host"),
            ("opa }}:9191", "bad host"),
        ] {
            let err = External::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    /// The external scenario's Envoy config, pointed at a real ext_authz gRPC server (ours,
    /// standing in for OPA-Envoy or Authorino): a token it accepts passes, none is refused.
    #[test]
    fn the_external_listener_asks_the_external_server() {
        let idp = DevIdp::start(&[]);
        let echo = Echo::start();
        let server = AuthzServerProcess::start(&server_yaml(
            idp.port,
            &format!("token:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  jwks_uri: http://127.0.0.1:{{IDP_PORT}}/.well-known/jwks.json\n"),
        ));
        let external = External::parse(&format!("localhost:{}", server.grpc_port)).unwrap();
        // No cluster of ours is reachable: only the external one answers.
        let yaml = render(&[external.listener()], 1, echo.port, 1, 1, Some(&external));
        let envoy = Envoy::start_rendered(&yaml);
        let port = listener_port(envoy.admin_port, EXTERNAL_LISTENER).unwrap();
        let url = format!("http://127.0.0.1:{port}/admin/users");
        let token = idp.mint(json!({"sub": "bench", "scope": "read admin"}));
        let allowed = get(&url, &[("authorization", &format!("Bearer {token}"))]);
        assert_eq!(allowed.status, 200, "{}", allowed.body);
        assert_eq!(get(&url, &[]).status, 401);
    }
}
