//! One policy, three places. A policy file names the providers, the routes with their tiers
//! and requirements, and how server-decided tiers reach the ext_authz server; [`render`]
//! derives from it what each component reads:
//!
//! - the Wasm filter's JSON (providers with their keys found by discovery or a path, routes,
//!   default, headers, and in `filter` mode the link to the server);
//! - the ext_authz server's YAML (its own sections from `server.config`, plus the provider's
//!   `token` rules, the same `policy` routes and `requests` rules, and `strip_headers` for
//!   every header name the filter sets: on the routes the server decides no filter runs), and
//!   the signed verification context (`context`: the filter's part without the server's signing
//!   seed and rotation);
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
//! With an `istio:` section it also writes the Istio resources: the WasmPlugin (phase AUTHN,
//! `FAIL_RELOAD`, the filter's configuration as `pluginConfig`, the feed secret a `${NAME}`
//! reference the filter reads from its VM's environment, `vmConfig.env` with `valueFrom:
//! HOST`, so the secret comes from a Kubernetes Secret in the proxy's environment and never
//! sits in the WasmPlugin) and the server's ConfigMap. Under Istio the filter decides every
//! tier (`mode: filter`): a CUSTOM ext_authz check behind a WasmPlugin never sees a token.
//!
//! Every output is validated with the component's own loader before it is returned; all
//! problems are reported at once.

use serde::Deserialize;
use serde_json::{json, Map, Value};

mod candidate;
pub use candidate::{candidate, Candidate, CandidateSettings};

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
    /// Requests upstreams may read differently (method overrides, encoded reserved characters
    /// in paths): the filter's and the server's `requests`, the same for both.
    pub requests: Option<Value>,
    /// The signed verification context: the filter gets it without the server's keys
    /// (`signing_seed_file`, `rotate_every_seconds`), the server whole.
    pub context: Option<Value>,
    /// Token Status Lists the provider's tokens may name: the filter gets `uris` (its change
    /// feed brings what the lists revoke), the server the whole section (it fetches them).
    pub status_lists: Option<Value>,
    /// Resource rules for batch authorization (list endpoints): the server's (its batch API
    /// decides them; `batch_token` goes in `server.config`).
    pub resources: Option<Value>,
    /// Further filter settings (`cache`, `key_wait_timeout_ms`, ...), copied as they are.
    #[serde(default)]
    pub filter: Map<String, Value>,
    /// Envoy: the upstream cluster of the generated routes.
    #[serde(default)]
    pub envoy: EnvoyEntry,
    /// Istio: where the WasmPlugin and the server's ConfigMap go.
    pub istio: Option<IstioEntry>,
}

/// The Istio resources' placement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioEntry {
    /// The workload's namespace (the WasmPlugin's).
    pub namespace: String,
    /// The workload's pod labels (the WasmPlugin's `selector.matchLabels`).
    pub selector: Map<String, Value>,
    /// The filter's image (`oci://…`, see deploy/docker/filter.Dockerfile).
    pub image: String,
    /// The server's namespace (its ConfigMap's); default `authz-system`.
    pub server_namespace: Option<String>,
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
    /// How the filter and the server fetch the provider's keys.
    #[serde(default)]
    pub keys: KeyFetchEntry,
    /// Refuse tokens with an ID token's markers, in the filter and the server.
    pub refuse_id_tokens: Option<bool>,
    /// Longest accepted token lifetime, seconds, in the filter and the server (which also
    /// keeps revocations whose token's expiry it does not know this long).
    pub max_lifetime_seconds: Option<u64>,
    /// Marks client-credentials tokens that carry a `sub`, in the filter and the server.
    pub client_grant: Option<Value>,
}

/// Key-fetch settings of a provider, for the filter (`jwks.remote`) and the server (`token`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFetchEntry {
    /// Scheduled refresh of the keys (and discovered metadata), seconds.
    pub refresh_interval_seconds: Option<u64>,
    /// At most one refetch per this many seconds for a token the keys fail.
    pub min_refetch_interval_seconds: Option<u64>,
    /// Deadline of one fetch by the filter, ms.
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyEntry {
    pub upstream_cluster: Option<String>,
    /// Which build of the filter Envoy loads: the routes' per-filter settings name its HTTP
    /// filter entry.
    #[serde(default)]
    pub filter: FilterBuild,
}

/// The two builds of the filter. Their configuration (`filter.json`) is the same; Envoy's
/// HTTP filter entry differs, and so does the name routes use to switch the filter off.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterBuild {
    /// `envoy.filters.http.wasm` (Envoy or Istio).
    #[default]
    Wasm,
    /// `envoy.filters.http.dynamic_modules` (plain Envoy of the version it was built for).
    Native,
}

impl FilterBuild {
    /// The name of the filter's HTTP filter entry (and the key of its per-route settings).
    pub fn envoy_filter_name(self) -> &'static str {
        match self {
            FilterBuild::Wasm => WASM,
            FilterBuild::Native => NATIVE,
        }
    }
}

/// The filter's link to the server, in both modes: in `filter` mode it calls the server for
/// server tiers; in both it reads the change feed, so revocations reach the routes it decides
/// locally. Without `admin_envoy_cluster` and `epochs_token` that is a problem, unless the
/// policy opts out with `feed: false`.
fn filter_link(
    server: &ServerEntry,
    env: &impl Fn(&str) -> Option<String>,
    keep_references: bool,
    problems: &mut Vec<String>,
) -> Value {
    let mut link = Map::new();
    link.insert("cluster".into(), json!(server.envoy_cluster));
    if !server.feed {
        link.insert("local_revocations".into(), json!([]));
        return Value::Object(link);
    }
    let (Some(admin), Some(token)) = (&server.admin_envoy_cluster, &server.epochs_token) else {
        problems.push(
            "server: admin_envoy_cluster and epochs_token are needed so revocations reach the routes the filter decides locally (the change feed); set feed: false to go without (revocations then reach server-decided routes only)"
                .to_owned(),
        );
        return Value::Object(link);
    };
    let token = if keep_references {
        // Read by the filter from its VM's environment (Istio: `vmConfig.env`): the whole
        // value, so no part of the secret sits in the resource.
        if authz_core::env_refs::whole_reference(token).is_none() {
            problems.push(
                "server.epochs_token: under Istio it must be a ${NAME} reference (the filter reads it from the proxy's environment, filled from a Secret): a literal would sit in the WasmPlugin, readable by everyone who can read the namespace"
                    .to_owned(),
            );
        }
        token.clone()
    } else {
        let (token, unset) = ext_authz_server::config::expand_env(token, env);
        for name in unset {
            problems.push(format!(
                "server.epochs_token: ${{{name}}} is not set in the environment (the filter reads its configuration inside Envoy and cannot expand it; set it when rendering)"
            ));
        }
        token
    };
    link.insert("epochs_cluster".into(), json!(admin));
    if let Some(host) = istio_host(admin) {
        link.insert("epochs_authority".into(), json!(host));
    }
    link.insert("epochs_token".into(), json!(token));
    Value::Object(link)
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

fn feed_on() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub mode: Mode,
    /// The Envoy cluster of the server's gRPC port.
    pub envoy_cluster: String,
    /// The Envoy cluster of the server's admin port (the change feed), in both modes.
    pub admin_envoy_cluster: Option<String>,
    /// The read-only feed token (the server's `epochs_token`), in both modes. `${NAME}` is
    /// expanded when rendering (the filter cannot); the server's YAML keeps the reference.
    pub epochs_token: Option<String>,
    /// `false`: no change feed for the filter, so revocations reach only the routes the server
    /// decides (locally decided routes keep serving a revoked token until it expires).
    #[serde(default = "feed_on")]
    pub feed: bool,
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
    /// The Istio resources (YAML documents), when the policy has an `istio:` section.
    pub istio: Option<String>,
    /// The bootstrap's `stats_config` (YAML text) that turns the filter's metric names into
    /// Prometheus families with labels ([`envoy_stats_config`]).
    pub envoy_stats: String,
}

/// Envoy's `stats_tags` for the filter's metrics (`filter_core::metrics::stats_tags`), as the
/// bootstrap's `stats_config` takes them.
pub fn stats_tags() -> Value {
    Value::Array(
        filter_core::metrics::stats_tags()
            .into_iter()
            .map(|(label, regex)| json!({"tag_name": label, "regex": regex}))
            .collect(),
    )
}

/// The bootstrap's `stats_config` block (YAML text, top level): with it, `/stats/prometheus`
/// shows `authz_proxy_decisions_total{outcome=…,tier=…,reason=…}` instead of one family per
/// label value. Merge it into the bootstrap of every Envoy that runs the filter.
pub fn envoy_stats_config() -> String {
    let mut text = String::from(
        "# Generated by authz-config: the filter's metric names → Prometheus labels, and its\n# histograms' buckets (µs).\nstats_config:\n  stats_tags:\n",
    );
    for (label, regex) in filter_core::metrics::stats_tags() {
        text.push_str(&format!("  - tag_name: {label}\n    regex: '{regex}'\n"));
    }
    let buckets: Vec<String> = filter_core::metrics::HISTOGRAM_BUCKETS_US
        .iter()
        .map(u64::to_string)
        .collect();
    text.push_str(&format!(
        "  histogram_bucket_settings:\n  - match: {{ safe_regex: {{ regex: '{}' }} }}\n    buckets: [{}]\n",
        filter_core::metrics::histogram_names(),
        buckets.join(", ")
    ));
    text
}

/// The bootstrap's `histogram_bucket_settings` for the filter's histograms (JSON).
pub fn histogram_bucket_settings() -> Value {
    json!([{
        "match": {"safe_regex": {"regex": filter_core::metrics::histogram_names()}},
        "buckets": filter_core::metrics::HISTOGRAM_BUCKETS_US,
    }])
}

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const WASM: &str = "envoy.filters.http.wasm";
const NATIVE: &str = "envoy.filters.http.dynamic_modules";

/// The host an Istio cluster name (`outbound|PORT|SUBSET|HOST`) sends to: the `:authority`
/// its requests need (the filter's default, the cluster's name, is no host).
fn istio_host(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("outbound"), Some(_), Some(_), Some(host), None) if !host.is_empty() => Some(host),
        _ => None,
    }
}

fn provider_json(p: &ProviderEntry) -> Value {
    let mut remote = match &p.jwks_path {
        Some(path) => json!({"cluster": p.envoy_cluster, "path": path}),
        None => json!({"cluster": p.envoy_cluster, "discovery": true}),
    };
    if let (Some(host), Some(object)) = (istio_host(&p.envoy_cluster), remote.as_object_mut()) {
        object.insert("authority".into(), json!(host));
    }
    for (key, value) in [
        ("refresh_interval_seconds", p.keys.refresh_interval_seconds),
        (
            "min_refetch_interval_seconds",
            p.keys.min_refetch_interval_seconds,
        ),
        ("timeout_ms", p.keys.timeout_ms),
    ] {
        if let (Some(value), Some(object)) = (value, remote.as_object_mut()) {
            object.insert(key.into(), json!(value));
        }
    }
    let mut provider = json!({
        "name": p.name.clone().unwrap_or_else(|| p.issuer.clone()),
        "issuer": p.issuer,
        "audiences": p.audiences,
        "jwks": {"remote": remote},
    });
    if let (Some(refuse), Some(object)) = (p.refuse_id_tokens, provider.as_object_mut()) {
        object.insert("refuse_id_tokens".into(), json!(refuse));
    }
    if let (Some(max), Some(object)) = (p.max_lifetime_seconds, provider.as_object_mut()) {
        object.insert("max_lifetime_seconds".into(), json!(max));
    }
    if let (Some(grant), Some(object)) = (&p.client_grant, provider.as_object_mut()) {
        object.insert("client_grant".into(), grant.clone());
    }
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
/// filter (`build`) off.
fn envoy_route(
    name: &str,
    matcher: Value,
    tier: Option<authz_core::Tier>,
    mode: Option<Mode>,
    upstream: &str,
    build: FilterBuild,
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
                build.envoy_filter_name(): {
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
/// component's loader; every problem is named. `${NAME}` references in the filter's secrets
/// (the feed token) are expanded from the process environment: see [`render_with_env`].
pub fn render(policy_text: &str) -> Result<Rendered, Vec<String>> {
    render_with_env(policy_text, &|name| std::env::var(name).ok())
}

/// [`render`] with `env` for the variables. The filter cannot expand variables (its
/// configuration is read inside Envoy), so a `${NAME}` in `server.epochs_token` is replaced
/// here, and an unset one is a problem naming it; the server's YAML keeps its references, for
/// the server to expand where it runs.
pub fn render_with_env(
    policy_text: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Rendered, Vec<String>> {
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
        if let Some(requests) = &policy.requests {
            object.insert("requests".into(), requests.clone());
        }
        if let Some(context) = &policy.context {
            let mut filter_context = context.clone();
            if let Some(fields) = filter_context.as_object_mut() {
                for server_only in ["signing_seed_file", "signing_seed", "rotate_every_seconds"] {
                    fields.remove(server_only);
                }
            }
            object.insert("context".into(), filter_context);
        }
        if let Some(lists) = &policy.status_lists {
            object.insert(
                "status_lists".into(),
                json!({"uris": lists.get("uris").cloned().unwrap_or(Value::Null)}),
            );
        }
        if let Some(server) = &policy.server {
            let keep = policy.istio.is_some();
            object.insert(
                "server".into(),
                filter_link(server, env, keep, &mut problems),
            );
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
    // Under Istio the feed secret stays a reference the filter resolves where it runs; a
    // strong stand-in checks the rest here.
    let stand_in = |name: &str| Some(format!("rendered-stand-in-{name}-0123456789"));
    let filter_policy =
        match authz_core::Policy::from_json_with_env(filter.to_string().as_bytes(), &stand_in) {
            Ok(policy) => Some(policy),
            Err(e) => {
                problems.push(format!("the derived filter configuration: {e}"));
                None
            }
        };

    // The server.
    let server = match (&policy.server, policy.providers.first()) {
        (Some(entry), Some(provider)) => {
            let mut config = entry.config.clone();
            for key in [
                "realm",
                "policy",
                "strip_headers",
                "requests",
                "context",
                "status_lists",
                "resources",
            ] {
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
            for (key, value) in [
                (
                    "jwks_refresh_interval_seconds",
                    provider.keys.refresh_interval_seconds,
                ),
                (
                    "jwks_min_refetch_interval_seconds",
                    provider.keys.min_refetch_interval_seconds,
                ),
            ] {
                if let Some(value) = value {
                    token.insert(key.into(), json!(value));
                }
            }
            if let Some(refuse) = provider.refuse_id_tokens {
                token.insert("refuse_id_tokens".into(), json!(refuse));
            }
            // The server keeps revocations of every issuer's tokens for one bound: the
            // longest lifetime of all (each provider must set one for there to be a bound).
            let lifetimes: Vec<Option<u64>> = policy
                .providers
                .iter()
                .map(|p| p.max_lifetime_seconds)
                .collect();
            if lifetimes.iter().any(Option::is_some) && lifetimes.iter().any(Option::is_none) {
                problems.push(
                    "providers: max_lifetime_seconds is set on every provider or on none (the server keeps revocations of every issuer's tokens for the longest of them)"
                        .to_owned(),
                );
            } else if let Some(max) = lifetimes.into_iter().flatten().max() {
                token.insert("max_lifetime_seconds".into(), json!(max));
            }
            if let Some(grant) = &provider.client_grant {
                token.insert("client_grant".into(), grant.clone());
            }
            if let Some(typ) = &provider.typ {
                token.insert("typ".into(), json!(typ));
            }
            config.insert("token".into(), Value::Object(token));
            config.insert(
                "policy".into(),
                json!({"routes": field(&filter, "routes"), "default": field(&filter, "default")}),
            );
            // Every name the filter may set (renamed context headers, claim headers): on the
            // routes the server decides, no filter strips them, so the server must.
            let filter_headers: Vec<Value> = filter_policy
                .iter()
                .flat_map(|p| p.headers.all())
                .map(|name| json!(name))
                .collect();
            config.insert("strip_headers".into(), Value::Array(filter_headers));
            if let Some(requests) = &policy.requests {
                config.insert("requests".into(), requests.clone());
            }
            if let Some(context) = &policy.context {
                config.insert("context".into(), context.clone());
            }
            if let Some(lists) = &policy.status_lists {
                config.insert("status_lists".into(), lists.clone());
            }
            if let Some(resources) = &policy.resources {
                config.insert("resources".into(), resources.clone());
            }
            if let (Some(token), true) = (&entry.epochs_token, entry.feed) {
                config.insert("epochs_token".into(), json!(token));
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
                    match ext_authz_server::config::ServerConfig::from_yaml_with_env(
                        &text, stand_in,
                    ) {
                        Ok(_) => {}
                        Err(ext_authz_server::error::ServerError::InvalidConfig(found)) => {
                            // Files the configuration names (CA bundles, keys) are where the
                            // server runs, not where it is rendered: the server checks them
                            // at start.
                            problems.extend(
                                found
                                    .into_iter()
                                    .filter(|p| !is_unreadable_file(p))
                                    .map(|p| format!("the derived server configuration: {p}")),
                            );
                        }
                        Err(e) => problems.push(format!("the derived server configuration: {e}")),
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
                Ok(matcher) => routes.push(envoy_route(
                    name,
                    matcher,
                    tier_of(route),
                    mode,
                    &upstream,
                    policy.envoy.filter,
                )),
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
        policy.envoy.filter,
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
    if policy.istio.is_some() && policy.envoy.filter == FilterBuild::Native {
        problems.push(
            "istio: needs envoy.filter wasm (Istio loads filters as WasmPlugins; the native build is for plain Envoy)".into(),
        );
    }
    let istio = policy.istio.as_ref().and_then(|entry| {
        istio_resources(entry, &policy, &filter, server.as_deref(), &mut problems)
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Rendered {
        filter,
        server,
        envoy_routes,
        istio,
        envoy_stats: envoy_stats_config(),
    })
}

/// Whether a server configuration problem is only that a file it names (`…_file: cannot read
/// PATH`) is not on this machine.
fn is_unreadable_file(problem: &str) -> bool {
    problem
        .split_once(": ")
        .is_some_and(|(key, what)| key.ends_with("_file") && what.starts_with("cannot read "))
}

/// The WasmPlugin and the server's ConfigMap, as YAML documents.
fn istio_resources(
    entry: &IstioEntry,
    policy: &PolicyFile,
    filter: &Value,
    server: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<String> {
    if policy
        .server
        .as_ref()
        .is_some_and(|s| s.mode != Mode::Filter)
    {
        problems.push(
            "istio: server.mode must be filter (the WasmPlugin decides every tier; a CUSTOM ext_authz check behind it never sees a token)"
                .to_owned(),
        );
    }
    if !entry.image.starts_with("oci://") && !entry.image.starts_with("https://") {
        problems.push("istio.image: an oci:// or https:// URL of the filter's image".to_owned());
    }
    if entry.selector.is_empty() {
        problems.push(
            "istio.selector: the workload's labels (an empty selector is every workload of the namespace)"
                .to_owned(),
        );
    }
    // Every variable the plugin's configuration names, from the proxy's environment.
    let text = filter.to_string();
    let (_, referenced) = authz_core::env_refs::expand(&text, &|_| None);
    let env: Vec<Value> = referenced
        .iter()
        .map(|name| json!({"name": name, "valueFrom": "HOST"}))
        .collect();
    let mut spec = json!({
        "selector": {"matchLabels": entry.selector},
        "url": entry.image,
        "imagePullPolicy": "IfNotPresent",
        "phase": "AUTHN",
        "priority": 100,
        "failStrategy": "FAIL_RELOAD",
        "pluginName": "jwt_authz",
        "pluginConfig": filter,
    });
    if let (false, Some(object)) = (env.is_empty(), spec.as_object_mut()) {
        object.insert("vmConfig".into(), json!({"env": env}));
    }
    let plugin = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "jwt-authz", "namespace": entry.namespace},
        "spec": spec,
    });
    let mut documents = vec![yaml(
        &plugin,
        "# Generated by authz-config from the policy file: edit the policy, not this.
# The proxy's environment must hold every vmConfig.env variable, from a Secret: in the
# workload's pod template, a container named istio-proxy (merged into the injected sidecar)
# with env: [{name: AUTHZ_EPOCHS_TOKEN, valueFrom: {secretKeyRef: {name: …, key: …}}}].
",
    )];
    let stats = json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "jwt-authz-stats", "namespace": entry.namespace},
        "spec": {
            "workloadSelector": {"labels": entry.selector},
            "configPatches": [{
                "applyTo": "BOOTSTRAP",
                "patch": {"operation": "MERGE", "value": {"stats_config": {
                    "stats_tags": stats_tags(),
                    "histogram_bucket_settings": histogram_bucket_settings(),
                }}},
            }],
        },
    });
    documents.push(yaml(
        &stats,
        "# The filter's metrics as Prometheus families with labels (authz_proxy_decisions_total{…}),
# appended to the sidecar's own tags; it applies when a proxy starts. Istio exports only the
# stats its matcher includes: add proxyStatsMatcher: {inclusionPrefixes: [wasmcustom.authz_proxy]}
# to the workload's proxy.istio.io/config annotation.
",
    ));
    if let Some(server) = server {
        let map = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "ext-authz-server",
                "namespace": entry.server_namespace.as_deref().unwrap_or("authz-system"),
            },
            "data": {"server.yaml": server},
        });
        documents.push(yaml(
            &map,
            "# The server's configuration; its ${NAME} secrets come from its environment.
",
        ));
    }
    match documents
        .into_iter()
        .collect::<Result<Vec<String>, String>>()
    {
        Ok(texts) => Some(texts.join(
            "---
",
        )),
        Err(e) => {
            problems.push(format!("istio: {e}"));
            None
        }
    }
}
