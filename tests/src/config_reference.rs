//! The configuration reference (`docs/config-reference.md`), generated from the JSON schemas
//! of the real configuration types (`schemars` on `authz_core::config::FilterConfig` and
//! `ext_authz_server::config::ServerConfigFile`): every key the parsers accept, its type and its
//! doc comment, with the default the validator applies where the type names one (a schema
//! `default` taken from the same constant). A test fails when the committed file differs from
//! what the types say, so the reference cannot drift; `make docs` rewrites it.

use serde_json::Value;

/// One documented key.
struct Row {
    path: String,
    kind: String,
    description: String,
}

fn resolve<'a>(node: &'a Value, defs: &'a Value) -> &'a Value {
    if let Some(name) = node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        return &defs[name];
    }
    if let Some(options) = node.get("anyOf").and_then(Value::as_array) {
        if let Some(real) = options
            .iter()
            .find(|o| o.get("type") != Some(&Value::from("null")))
        {
            return resolve(real, defs);
        }
    }
    node
}

fn type_name(node: &Value) -> Option<&str> {
    match node.get("type")? {
        Value::String(t) => Some(t),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null"),
        _ => None,
    }
}

fn description(own: &Value, target: &Value) -> String {
    let text = own
        .get("description")
        .or_else(|| target.get("description"))
        .and_then(Value::as_str)
        .unwrap_or("");
    text.split("\n\n")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A default as the reference prints it: the value the validator applies (from the schema's
/// `default`, which the configuration types take from their named constants).
fn default_text(value: &Value) -> String {
    match value {
        Value::String(text) => format!("`{text}`"),
        other => format!("`{other}`"),
    }
}

fn kind_of(node: &Value, defs: &Value) -> String {
    let target = resolve(node, defs);
    match type_name(target) {
        Some("object") if target.get("properties").is_some() => "object".into(),
        Some("object") => match target.get("additionalProperties") {
            Some(values) => format!("map of {}", kind_of(values, defs)),
            None => "object".into(),
        },
        Some("array") => match target.get("items") {
            Some(items) => format!("list of {}", kind_of(items, defs)),
            None => "list".into(),
        },
        Some(t) => t.into(),
        // A string enum whose variants carry docs: `oneOf` of `const`s.
        None if target
            .get("oneOf")
            .and_then(Value::as_array)
            .is_some_and(|v| {
                !v.is_empty()
                    && v.iter()
                        .all(|v| v.get("const").is_some_and(Value::is_string))
            }) =>
        {
            "string".into()
        }
        None => "any JSON value".into(),
    }
}

fn walk(node: &Value, path: &str, defs: &Value, rows: &mut Vec<Row>) {
    let target = resolve(node, defs);
    if let Some(properties) = target.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            let child_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let child_target = resolve(child, defs);
            let mut text = description(child, child_target);
            let stated = |d: &&Value| {
                !matches!(d, Value::Array(a) if a.is_empty())
                    && !matches!(d, Value::Object(o) if o.is_empty())
            };
            if let Some(default) = child.get("default").filter(stated) {
                text = format!("{text} Default {}.", default_text(default))
                    .trim_start()
                    .to_owned();
            }
            rows.push(Row {
                path: child_path.clone(),
                kind: kind_of(child, defs),
                description: text,
            });
            walk(child, &child_path, defs, rows);
        }
    } else if let Some(values) = target.get("additionalProperties") {
        walk(values, &format!("{path}.<name>"), defs, rows);
    } else if let Some(items) = target.get("items") {
        walk(items, &format!("{path}[]"), defs, rows);
    }
}

fn table(schema: &Value) -> String {
    let mut rows = Vec::new();
    walk(schema, "", &schema["$defs"], &mut rows);
    let mut out = String::from("| key | type | meaning |\n|---|---|---|\n");
    for row in rows {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            row.path, row.kind, row.description
        ));
    }
    out
}

/// The whole reference document.
pub fn render() -> String {
    let filter = schemars::schema_for!(authz_core::config::FilterConfig);
    let server = schemars::schema_for!(ext_authz_server::config::ServerConfigFile);
    format!(
        "# Configuration reference\n\n\
         Generated from the configuration types by `make docs` (a test fails when this file and \
         the types disagree). Every key is optional to the parser; what is required, and every \
         default, is stated in its meaning and enforced at load, where all problems are reported \
         at once. Unknown keys are errors.\n\n\
         ## Filter plugin configuration (JSON)\n\n\
         The Wasm filter's `configuration` (Envoy) or `pluginConfig` (Istio `WasmPlugin`). \
         Examples: `envoy/dev.yaml`, `deploy/istio/wasm-plugin.yaml`.\n\n{}\n\
         ## Server configuration (YAML)\n\n\
         `ext-authz-server --config FILE`. Examples: `config/ext-authz-server.dev.yaml`, \
         `deploy/compose/server.yaml`, the ConfigMap in `deploy/istio/ext-authz-server.yaml`. \
         `policy` takes the filter's route rules (`routes[]`, `default`) as above.\n\n{}",
        table(filter.as_value()),
        table(server.as_value())
    )
}
