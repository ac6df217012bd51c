//! `${NAME}` references to environment variables in configuration text, shared by the
//! server's loader (every string value), `authz-config render` (the filter's feed secret) and
//! the filter itself (its feed secret, from the Wasm VM's environment: Envoy's
//! `vm_config.environment_variables`, Istio's WasmPlugin `vmConfig.env`, so the secret can come
//! from a Kubernetes Secret instead of sitting in the plugin's configuration).
//!
//! Pure: the lookup is a parameter.

/// Whether `name` is a variable name this expands: `[A-Z_][A-Z0-9_]*`.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Replaces every `${NAME}` (NAME as [`is_name`] says) with `env(NAME)`; returns the text and
/// the names that had no value (replaced by nothing). Anything else is left as it is.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut rest = text;
    while let Some((before, after)) = rest.split_once("${") {
        out.push_str(before);
        match after.split_once('}').filter(|(name, _)| is_name(name)) {
            Some((name, tail)) => {
                match env(name) {
                    Some(value) => out.push_str(&value),
                    None => unset.push(name.to_owned()),
                }
                rest = tail;
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, unset)
}

/// The variable `text` names when it is one whole reference (`${NAME}` and nothing else).
pub fn whole_reference(text: &str) -> Option<&str> {
    text.strip_prefix("${")?
        .strip_suffix('}')
        .filter(|name| is_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upper_case_names_in_braces_are_replaced() {
        let env = |name: &str| (name == "SET_1").then(|| "value".to_owned());
        assert_eq!(
            expand("a ${SET_1} b ${UNSET} c ${lower} $HOME ${1X} ${", &env),
            (
                "a value b  c ${lower} $HOME ${1X} ${".to_owned(),
                vec!["UNSET".to_owned()]
            )
        );
        assert_eq!(whole_reference("${TOKEN}"), Some("TOKEN"));
        for partial in [
            "Bearer ${TOKEN}",
            "${TOKEN}x",
            "${lower}",
            "${A}${B}",
            "plain",
        ] {
            assert_eq!(whole_reference(partial), None, "{partial}");
        }
    }
}
