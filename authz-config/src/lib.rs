//! One policy, three places. A policy file names the providers, the routes with their tiers
//! and requirements, and how server-decided tiers reach the ext_authz server; [`render`]
//! derives from it what each component reads:
//!
//! - the Wasm filter's JSON (providers with their keys found by discovery or a path, routes,
//!   default, headers, and in `filter` mode the link to the server);
//! - the ext_authz server's YAML (its own sections from `server.config`, plus the provider's
//!   `token` rules, the same `policy` routes, and `strip_headers` for every claim header the
//!   filter sets);
//! - Envoy's routes for one virtual host: in `native` mode each route of a server-decided tier
//!   turns Envoy's ext_authz filter on with its tier and turns the Wasm filter off, the others
//!   leave the Wasm filter deciding (ext_authz is off at the virtual host); in `filter` mode the
//!   Wasm filter calls the server itself and Envoy needs one catch-all route.
//!
//! The routes are copied, not re-interpreted, so the filter and the server match alike; Envoy's
//! matchers are translated (`prefix` → `path_separated_prefix`, `exact` → `path`, `regex` →
//! `safe_regex`, `ignore_case` → `case_sensitive: false`, methods → a `:method` header
//! matcher). Where Envoy's matching still differs (it does not strip `;` parameters), a request
//! can only land on a stricter path: the Wasm filter on a local route refuses a request its own
//! table puts on a server tier, and the server takes the stricter of Envoy's tier and its own.
//!
//! Every output is validated with the component's own loader before it is returned; all
//! problems are reported at once.

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The policy file as written (YAML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// `realm` of `WWW-Authenticate`, for the filter and the server.
    pub realm: Option<String>,
    /// Trusted issuers. The server verifies and introspects for the first one.
    #[serde(default)]
    pub providers: Vec<ProviderEntry>,
    /// Route rules, first match wins (the filter's syntax).
    #[serde(default)]
    pub routes: Vec<Value>,
    /// The rule for unmatched requests.
    pub default: Option<Value>,
    /// Context header names (the filter's `headers`).
    pub headers: Option<Value>,
    /// How server-decided tiers reach the server, and the server's own settings.
    pub server: Option<ServerEntry>,
    /// Further filter settings (`cache`, `key_wait_timeout_ms`, ...), copied as they are.
    #[serde(default)]
    pub filter: Map<String, Value>,
    /// Envoy: the upstream cluster of the generated routes.
    #[serde(default)]
    pub envoy: EnvoyEntry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    pub name: Option<String>,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The Envoy cluster of the issuer's host: the filter fetches the metadata and keys
    /// through it.
    pub envoy_cluster: String,
    /// The JWKS path on that host; without it, discovery.
    pub jwks_path: Option<String>,
    /// Required JWS `typ` (e.g. `at+jwt`).
    pub typ: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyEntry {
    pub upstream_cluster: Option<String>,
}

/// How Envoy sends server-decided tiers to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Envoy's ext_authz filter calls the server on those routes.
    Native,
    /// The Wasm filter calls the server (with its decision cache).
    Filter,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub mode: Mode,
    /// The Envoy cluster of the server's gRPC port.
    pub envoy_cluster: String,
    /// `filter` mode: the Envoy cluster of the server's admin port (epochs polls).
    pub admin_envoy_cluster: Option<String>,
    /// `filter` mode: the read-only epochs token (the server's `epochs_token`).
    pub epochs_token: Option<String>,
    /// The server's own sections (`listen`, `admin_token`, `introspection`, `tiers`, ...),
    /// copied as they are; `realm`, `token.issuer`/`audiences`, `policy` and `strip_headers`
    /// come from the policy.
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// The three derived configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The Wasm filter's configuration (JSON).
    pub filter: Value,
    /// The ext_authz server's configuration (as YAML text), when the policy has a server.
    pub server: Option<String>,
    /// Envoy's virtual-host routes (YAML text: `typed_per_filter_config` and `routes`).
    pub envoy_routes: String,
}

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const WASM: &str = "envoy.filters.http.wasm";

fn provider_json(p: &ProviderEntry) -> Value {
    let remote = match &p.jwks_path {
        Some(path) => json!({"cluster": p.envoy_cluster, "path": path}),
        None => json!({"cluster": p.envoy_cluster, "discovery": true}),
    };
    let mut provider = json!({
        "name": p.name.clone().unwrap_or_else(|| p.issuer.clone()),
        "issuer": p.issuer,
        "audiences": p.audiences,
        "jwks": {"remote": remote},
    });
    if let (Some(typ), Some(object)) = (&p.typ, provider.as_object_mut()) {
        object.insert("typ".into(), json!(typ));
    }
    provider
}

/// Envoy's route match for one of the filter's route matchers.
fn envoy_match(route: &Value) -> Result<Value, String> {
    let matcher = route
        .get("match")
        .and_then(Value::as_object)
        .ok_or("a route has no match")?;
    let ignore_case = matcher
        .get("ignore_case")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut out = Map::new();
    if let Some(exact) = matcher.get("exact").and_then(Value::as_str) {
        out.insert("path".into(), json!(exact));
    } else if let Some(prefix) = matcher.get("prefix").and_then(Value::as_str) {
        let base = prefix.trim_end_matches('/');
        if base.is_empty() {
            out.insert("prefix".into(), json!("/"));
        } else {
            // The filter's prefixes stop at segment boundaries, like this matcher.
            out.insert("path_separated_prefix".into(), json!(base));
        }
    } else if let Some(regex) = matcher.get("regex").and_then(Value::as_str) {
        let regex = if ignore_case {
            format!("(?i){regex}")
        } else {
            regex.to_owned()
        };
        out.insert("safe_regex".into(), json!({"regex": regex}));
    } else {
        return Err("a route's match has none of exact, prefix, regex".into());
    }
    if ignore_case && !out.contains_key("safe_regex") {
        out.insert("case_sensitive".into(), json!(false));
    }
    if let Some(methods) = matcher.get("methods").and_then(Value::as_array) {
        let names: Vec<String> = methods
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_uppercase)
            .collect();
        if !names.is_empty() {
            out.insert(
                "headers".into(),
                json!([{"name": ":method", "string_match": {"safe_regex": {"regex": names.join("|")}}}]),
            );
        }
    }
    Ok(Value::Object(out))
}

fn tier_of(route: &Value) -> Option<authz_core::Tier> {
    route.get("tier")?.as_str()?.parse().ok()
}

/// One Envoy route: in `native` mode a server tier turns ext_authz on (with the tier) and the
/// Wasm filter off.
fn envoy_route(
    name: &str,
    matcher: Value,
    tier: Option<authz_core::Tier>,
    mode: Option<Mode>,
    upstream: &str,
) -> Value {
    let mut route = json!({"name": name, "match": matcher, "route": {"cluster": upstream}});
    let server_tier = tier.filter(|t| t.requires_server());
    if let (Some(tier), Some(Mode::Native), Some(object)) =
        (server_tier, mode, route.as_object_mut())
    {
        object.insert(
            "typed_per_filter_config".into(),
            json!({
                EXT_AUTHZ: {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                    "check_settings": {"context_extensions": {"tier": tier.as_str()}}
                },
                WASM: {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "disabled": true
                }
            }),
        );
    }
    route
}

/// A member of a JSON object (null when absent).
fn field(value: &Value, name: &str) -> Value {
    value.get(name).cloned().unwrap_or(Value::Null)
}

fn yaml(value: &Value, header: &str) -> Result<String, String> {
    serde_yaml::to_string(value)
        .map(|text| format!("{header}{text}"))
        .map_err(|e| e.to_string())
}

/// Derives the three configurations from a policy file's text, validating each with its
/// component's loader; every problem is named.
pub fn render(policy_text: &str) -> Result<Rendered, Vec<String>> {
    let policy: PolicyFile =
        serde_yaml::from_str(policy_text).map_err(|e| vec![format!("policy: {e}")])?;
    let mut problems = Vec::new();
    if policy.providers.is_empty() {
        problems.push("providers: at least one is required".to_owned());
    }
    let Some(default) = policy.default.clone() else {
        return Err(vec![
            "default: is required (the rule for unmatched requests)".into(),
        ]);
    };
    let mode = policy.server.as_ref().map(|s| s.mode);
    let needs_server = policy
        .routes
        .iter()
        .chain(std::iter::once(&default))
        .filter_map(tier_of)
        .any(authz_core::Tier::requires_server);
    if needs_server && policy.server.is_none() {
        problems.push(
            "server: routes of privileged or regulated tiers need one (mode, envoy_cluster, config)"
                .to_owned(),
        );
    }

    // The filter.
    let mut filter = json!({
        "realm": policy.realm.clone().unwrap_or_else(|| "api".into()),
        "providers": policy.providers.iter().map(provider_json).collect::<Vec<_>>(),
        "routes": policy.routes,
        "default": default,
    });
    if let Some(object) = filter.as_object_mut() {
        if let Some(headers) = &policy.headers {
            object.insert("headers".into(), headers.clone());
        }
        if let Some(server) = policy.server.as_ref().filter(|s| s.mode == Mode::Filter) {
            let mut link = json!({"cluster": server.envoy_cluster});
            if let (Some(admin), Some(link)) = (&server.admin_envoy_cluster, link.as_object_mut()) {
                link.insert("epochs_cluster".into(), json!(admin));
                link.insert(
                    "epochs_token".into(),
                    json!(server.epochs_token.clone().unwrap_or_default()),
                );
            }
            object.insert("server".into(), link);
        }
        for (key, value) in &policy.filter {
            if object.contains_key(key) {
                problems.push(format!(
                    "filter.{key}: comes from the policy; set it there, not under filter"
                ));
            } else {
                object.insert(key.clone(), value.clone());
            }
        }
    }
    if let Err(e) = authz_core::Policy::from_json(filter.to_string().as_bytes()) {
        problems.push(format!("the derived filter configuration: {e}"));
    }

    // The server.
    let server = match (&policy.server, policy.providers.first()) {
        (Some(entry), Some(provider)) => {
            let mut config = entry.config.clone();
            for key in ["realm", "policy", "strip_headers"] {
                if config.contains_key(key) {
                    problems.push(format!(
                        "server.config.{key}: comes from the policy; set it there"
                    ));
                }
            }
            config.insert("realm".into(), field(&filter, "realm"));
            let mut token = config
                .get("token")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            token.insert("issuer".into(), json!(provider.issuer));
            token.insert("audiences".into(), json!(provider.audiences));
            if let Some(typ) = &provider.typ {
                token.insert("typ".into(), json!(typ));
            }
            config.insert("token".into(), Value::Object(token));
            config.insert(
                "policy".into(),
                json!({"routes": field(&filter, "routes"), "default": field(&filter, "default")}),
            );
            let claim_headers: Vec<Value> = policy
                .headers
                .as_ref()
                .and_then(|h| h.get("claims"))
                .and_then(Value::as_object)
                .map(|claims| claims.values().cloned().collect())
                .unwrap_or_default();
            config.insert("strip_headers".into(), Value::Array(claim_headers));
            if entry.mode == Mode::Filter {
                if let Some(token) = &entry.epochs_token {
                    config.insert("epochs_token".into(), json!(token));
                }
            }
            let value = Value::Object(config);
            match yaml(
                &value,
                "# Generated by authz-config from the policy file: edit the policy, not this.\n",
            ) {
                Ok(text) => {
                    // Secrets stay `${VARIABLE}` references for the server to expand where it
                    // runs; here they stand in as strong placeholders.
                    let stand_in =
                        |name: &str| Some(format!("rendered-stand-in-{name}-0123456789"));
                    if let Err(e) =
                        ext_authz_server::config::ServerConfig::from_yaml_with_env(&text, stand_in)
                    {
                        problems.push(format!("the derived server configuration: {e}"));
                    }
                    Some(text)
                }
                Err(e) => {
                    problems.push(format!("server: {e}"));
                    None
                }
            }
        }
        _ => None,
    };

    // Envoy.
    let upstream = policy
        .envoy
        .upstream_cluster
        .clone()
        .unwrap_or_else(|| "upstream".into());
    let mut routes = Vec::new();
    if let Some(Value::Array(policy_routes)) = filter.get("routes") {
        for (i, route) in policy_routes.iter().enumerate() {
            let name = route
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match envoy_match(route) {
                Ok(matcher) => {
                    routes.push(envoy_route(name, matcher, tier_of(route), mode, &upstream))
                }
                Err(e) => problems.push(format!("routes[{i}]: {e}")),
            }
        }
    }
    routes.push(envoy_route(
        "default",
        json!({"prefix": "/"}),
        tier_of(&field(&filter, "default")),
        mode,
        &upstream,
    ));
    let mut vhost = json!({"routes": routes});
    if let (Some(Mode::Native), Some(object)) = (mode, vhost.as_object_mut()) {
        object.insert(
            "typed_per_filter_config".into(),
            json!({EXT_AUTHZ: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "disabled": true
            }}),
        );
    }
    let envoy_routes = yaml(
        &vhost,
        "# Generated by authz-config: the routes of one virtual host (and its per-filter\n# defaults). Edit the policy, not this.\n",
    )
    .unwrap_or_else(|e| {
        problems.push(format!("envoy: {e}"));
        String::new()
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Rendered {
        filter,
        server,
        envoy_routes,
    })
}
