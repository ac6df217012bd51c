//! Which filter build the end-to-end tests run against: the Wasm filter (the default) or the
//! native dynamic module (`FILTER=native`). Every Envoy config the tests render is written for
//! the Wasm filter (the templates under `envoy/`, `authz-config`'s output); for the native
//! build it is rewritten here the way an operator would: the `envoy.filters.http.wasm` entry
//! that loads our `.wasm` becomes an `envoy.filters.http.dynamic_modules` entry with the same
//! configuration string, and routes that switch the filter off name the new entry. Other Wasm
//! filters (the test-only crash filter) are left alone.
//!
//! Metric names follow: a Wasm filter's are `wasmcustom.authz_proxy.*`, the module's are under the
//! prefix [`FilterBuild::stat_prefix`].

use serde_yaml::{Mapping, Value};
use std::path::PathBuf;

/// The two builds of the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterBuild {
    Wasm,
    Native,
}

/// The name of the native filter's Envoy HTTP filter entry.
pub const NATIVE_FILTER: &str = "envoy.filters.http.dynamic_modules";
const WASM_FILTER: &str = "envoy.filters.http.wasm";
/// The module's name (`libauthz_native.so`).
pub const NATIVE_MODULE: &str = "authz_native";

static FORCED: std::sync::OnceLock<FilterBuild> = std::sync::OnceLock::new();

/// Makes every stack of this test binary use `build`, whatever `FILTER` says (for a test file
/// about one build only). The first call wins.
pub fn force(build: FilterBuild) {
    let _ = FORCED.set(build);
}

impl FilterBuild {
    /// The build forced for this test binary, else from `FILTER` (`wasm`, the default, or
    /// `native`).
    pub fn current() -> FilterBuild {
        if let Some(build) = FORCED.get() {
            return *build;
        }
        match std::env::var("FILTER").as_deref() {
            Ok("native") => FilterBuild::Native,
            _ => FilterBuild::Wasm,
        }
    }

    /// The prefix Envoy gives the filter's metrics.
    pub fn stat_prefix(self) -> &'static str {
        match self {
            FilterBuild::Wasm => "wasmcustom.",
            FilterBuild::Native => "dynamicmodulescustom.",
        }
    }

    /// `name` (written with the Wasm prefix, as the tests do) for this build.
    pub fn stat_name(self, name: &str) -> String {
        match name.strip_prefix("wasmcustom.") {
            Some(rest) => format!("{}{rest}", self.stat_prefix()),
            None => name.to_owned(),
        }
    }

    /// How many change-feed requests an Envoy holds at the server once settled: (at least, at
    /// most). One, whatever the worker count: the Wasm VMs elect one reader that shares what
    /// it reads (`filter_core::feed_share`); the native module has one core per process.
    pub fn feed_holds(self) -> (f64, f64) {
        (1.0, 1.0)
    }

    /// How many readers of the change feed an Envoy has: one, for either build.
    pub fn feed_readers(self) -> u64 {
        1
    }

    /// How many of an Envoy's cores read the change feed once at start, each counting its
    /// read (`authz_proxy_feed_polls_total{result="ok"}` or `{result="failed"}`): for Wasm every VM (one per worker and the
    /// main thread's), the elected reader and each follower's catch-up alike; for native the
    /// process's one core.
    pub fn feed_reads_at_start(self, workers: u32) -> u64 {
        match self {
            FilterBuild::Wasm => u64::from(workers) + 1,
            FilterBuild::Native => 1,
        }
    }
}

/// Where the native module is built (`cargo build --release -p native-filter`), for
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub fn native_module_dir() -> PathBuf {
    crate::target_dir().join("release")
}

/// `config` (an Envoy YAML written for the Wasm filter) for `build`.
pub fn for_build(config: &str, build: FilterBuild) -> String {
    if build == FilterBuild::Wasm {
        return config.to_owned();
    }
    let Ok(mut document) = serde_yaml::from_str::<Value>(config) else {
        return config.to_owned();
    };
    // The module cannot read the node's locality: an operator moving to it names the zone in
    // the filter's configuration (`server.client_locality`), as done here.
    let locality = document.get("node").and_then(|node| {
        let locality = node.get("locality")?;
        let region = locality.get("region")?.as_str()?;
        let zone = locality.get("zone")?.as_str()?;
        Some(format!("{region}/{zone}"))
    });
    if !rewrite(&mut document, locality.as_deref()) {
        return config.to_owned();
    }
    serde_yaml::to_string(&document).unwrap_or_else(|_| config.to_owned())
}

/// A policy file's text (`authz-config`'s input) rendering for `build` (`envoy.filter`).
pub fn policy_for(policy: &str, build: FilterBuild) -> String {
    if build == FilterBuild::Wasm {
        return policy.to_owned();
    }
    let Ok(mut document) = serde_yaml::from_str::<Value>(policy) else {
        return policy.to_owned();
    };
    let Some(root) = document.as_mapping_mut() else {
        return policy.to_owned();
    };
    let envoy = root
        .entry(Value::from("envoy"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if let Some(envoy) = envoy.as_mapping_mut() {
        envoy.insert(Value::from("filter"), Value::from("native"));
    }
    serde_yaml::to_string(&document).unwrap_or_else(|_| policy.to_owned())
}

/// Rewrites every filter entry loading our `.wasm`, and every per-route key naming the Wasm
/// filter; whether any filter entry was rewritten.
fn rewrite(value: &mut Value, locality: Option<&str>) -> bool {
    let mut changed = false;
    match value {
        Value::Mapping(map) => {
            if let Some(native) = native_entry(map, locality) {
                *map = native;
                return true;
            }
            if let Some(Value::Mapping(per_filter)) = map.get_mut("typed_per_filter_config") {
                if let Some(setting) = per_filter.remove(WASM_FILTER) {
                    per_filter.insert(Value::from(NATIVE_FILTER), setting);
                }
            }
            for (_, child) in map.iter_mut() {
                changed |= rewrite(child, locality);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                changed |= rewrite(item, locality);
            }
        }
        _ => {}
    }
    changed
}

/// The native entry replacing `map`, when `map` is an HTTP filter entry loading our `.wasm`;
/// the node's `locality` goes into its configuration.
fn native_entry(map: &Mapping, locality: Option<&str>) -> Option<Mapping> {
    if map.get("name")?.as_str()? != WASM_FILTER {
        return None;
    }
    let config = map.get("typed_config")?.get("config")?;
    let file = config
        .get("vm_config")?
        .get("code")?
        .get("local")?
        .get("filename")?
        .as_str()?;
    if !file.ends_with("wasm_filter.wasm") {
        return None;
    }
    let mut configuration: serde_json::Value =
        serde_json::from_str(config.get("configuration")?.get("value")?.as_str()?).ok()?;
    if let (Some(locality), Some(server)) = (
        locality,
        configuration
            .get_mut("server")
            .and_then(serde_json::Value::as_object_mut),
    ) {
        server
            .entry("client_locality")
            .or_insert_with(|| locality.into());
    }
    let configuration = configuration.to_string();
    let entry = serde_yaml::from_str::<Value>(&format!(
        r#"
name: {NATIVE_FILTER}
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
  dynamic_module_config: {{ name: {NATIVE_MODULE} }}
  filter_name: jwt_authz
  filter_config:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: {}
"#,
        serde_json::to_string(&configuration).ok()?
    ))
    .ok()?;
    entry.as_mapping().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wasm_entry_and_route_keys_become_native_and_others_stay() {
        let wasm = r#"
node: { locality: { region: r, zone: z } }
routes:
- typed_per_filter_config:
    envoy.filters.http.wasm: { "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }
http_filters:
- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      vm_config: { code: { local: { filename: "/x/crash_filter.wasm" } } }
      configuration: { value: "{}" }
- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      vm_config: { code: { local: { filename: "/x/wasm_filter.wasm" } } }
      configuration: { "@type": type.googleapis.com/google.protobuf.StringValue, value: "{\"realm\": \"x\", \"server\": {}}" }
"#;
        let native: Value = serde_yaml::from_str(&for_build(wasm, FilterBuild::Native)).unwrap();
        let filters = native["http_filters"].as_sequence().unwrap();
        assert_eq!(filters[0]["name"], WASM_FILTER, "the crash filter stays");
        assert_eq!(filters[1]["name"], NATIVE_FILTER);
        let configuration: serde_json::Value = serde_json::from_str(
            filters[1]["typed_config"]["filter_config"]["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            configuration,
            serde_json::json!({"realm": "x", "server": {"client_locality": "r/z"}}),
            "the node's locality moves into the configuration"
        );
        let per_route = &native["routes"][0]["typed_per_filter_config"];
        assert!(per_route.get(WASM_FILTER).is_none());
        assert_eq!(per_route[NATIVE_FILTER]["disabled"], true);
        assert_eq!(for_build(wasm, FilterBuild::Wasm), wasm);
    }
}
