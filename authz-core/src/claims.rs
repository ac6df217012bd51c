//! The claims of a JWT payload, parsed once: the registered claims this project checks
//! (`iss`, `sub`, `aud`, `exp`, `nbf`, `iat`), the granted scopes (`scope` string or `scp`
//! array), and the raw object for claim requirements and claim-to-header mappings.
//!
//! Parsing is strict about types: a registered claim of the wrong JSON type makes the token
//! malformed rather than being ignored.

use serde_json::{Map, Value};

/// Parsed JWT claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub audiences: Vec<String>,
    pub expires_at: Option<i64>,
    pub not_before: Option<i64>,
    pub issued_at: Option<i64>,
    pub scopes: Vec<String>,
    /// The client the token was issued to: `client_id` (RFC 9068), else `azp`.
    pub client_id: Option<String>,
    pub raw: Map<String, Value>,
}

/// Why a payload could not be read as claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsError(pub &'static str);

impl Claims {
    /// Parses a JSON payload. The payload must be a JSON object.
    pub fn from_json(payload: &[u8]) -> Result<Claims, ClaimsError> {
        let value: Value =
            serde_json::from_slice(payload).map_err(|_| ClaimsError("payload is not json"))?;
        let Value::Object(raw) = value else {
            return Err(ClaimsError("payload is not a json object"));
        };
        Ok(Claims {
            issuer: string_claim(&raw, "iss")?,
            subject: string_claim(&raw, "sub")?,
            audiences: audience_claim(&raw)?,
            expires_at: numeric_date(&raw, "exp")?,
            not_before: numeric_date(&raw, "nbf")?,
            issued_at: numeric_date(&raw, "iat")?,
            scopes: scope_claim(&raw)?,
            client_id: match string_claim(&raw, "client_id")? {
                Some(id) => Some(id),
                None => string_claim(&raw, "azp")?,
            },
            raw,
        })
    }

    /// Who the token speaks for ([`crate::principal`]).
    pub fn principal(&self) -> Option<crate::principal::Principal<'_>> {
        crate::principal::principal(self.subject.as_deref(), self.client_id.as_deref())
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// A claim rendered as a header value: strings as they are, numbers and booleans in JSON
    /// form, arrays of those joined by a space. Objects and nulls have no header form.
    pub fn claim_as_header_value(&self, name: &str) -> Option<String> {
        match self.raw.get(name)? {
            Value::Array(items) => {
                let parts: Option<Vec<String>> = items.iter().map(scalar_text).collect();
                parts.map(|p| p.join(" "))
            }
            other => scalar_text(other),
        }
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_claim(
    raw: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, ClaimsError> {
    match raw.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ClaimsError(match name {
            "iss" => "iss is not a string",
            "sub" => "sub is not a string",
            _ => "string claim has another type",
        })),
    }
}

fn audience_claim(raw: &Map<String, Value>) -> Result<Vec<String>, ClaimsError> {
    match raw.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or(ClaimsError("aud array holds a non-string"))
            })
            .collect(),
        Some(_) => Err(ClaimsError("aud is neither a string nor an array")),
    }
}

/// RFC 7519 NumericDate: seconds, possibly fractional. Fractions are truncated toward the
/// stricter side by the caller's skew, so flooring is safe here.
fn numeric_date(raw: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, ClaimsError> {
    match raw.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Ok(Some(f.floor() as i64))
            } else {
                Err(ClaimsError("numeric date out of range"))
            }
        }
        Some(_) => Err(ClaimsError("numeric date claim is not a number")),
    }
}

fn scope_claim(raw: &Map<String, Value>) -> Result<Vec<String>, ClaimsError> {
    let mut scopes = Vec::new();
    match raw.get("scope") {
        None => {}
        Some(Value::String(s)) => {
            scopes.extend(s.split(' ').filter(|p| !p.is_empty()).map(str::to_owned))
        }
        Some(_) => return Err(ClaimsError("scope is not a space-delimited string")),
    }
    match raw.get("scp") {
        None => {}
        Some(Value::Array(items)) => {
            for item in items {
                let s = item
                    .as_str()
                    .ok_or(ClaimsError("scp array holds a non-string"))?;
                scopes.push(s.to_owned());
            }
        }
        Some(Value::String(s)) => {
            scopes.extend(s.split(' ').filter(|p| !p.is_empty()).map(str::to_owned))
        }
        Some(_) => return Err(ClaimsError("scp is neither an array nor a string")),
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Claims, ClaimsError> {
        Claims::from_json(json.as_bytes())
    }

    #[test]
    fn audience_may_be_a_string_or_an_array() {
        assert_eq!(parse(r#"{"aud":"a"}"#).unwrap().audiences, vec!["a"]);
        assert_eq!(
            parse(r#"{"aud":["a","b"]}"#).unwrap().audiences,
            vec!["a", "b"]
        );
        assert!(parse(r#"{"aud":5}"#).is_err());
        assert!(parse(r#"{"aud":["a",1]}"#).is_err());
    }

    #[test]
    fn scopes_come_from_scope_string_and_scp_array() {
        let c = parse(r#"{"scope":"read  write","scp":["admin"]}"#).unwrap();
        assert_eq!(c.scopes, vec!["read", "write", "admin"]);
        assert!(c.has_scope("write"));
        assert!(!c.has_scope("wri"));
    }

    #[test]
    fn wrongly_typed_registered_claims_are_rejected() {
        assert!(parse(r#"{"exp":"tomorrow"}"#).is_err());
        assert!(parse(r#"{"iss":1}"#).is_err());
        assert!(parse(r#"{"sub":{}}"#).is_err());
        assert!(parse(r#"[1,2]"#).is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn fractional_dates_are_floored() {
        assert_eq!(parse(r#"{"exp":100.9}"#).unwrap().expires_at, Some(100));
    }

    #[test]
    fn claims_render_as_header_values() {
        let c = parse(r#"{"tenant":"t1","n":3,"roles":["a","b"],"o":{}}"#).unwrap();
        assert_eq!(c.claim_as_header_value("tenant").as_deref(), Some("t1"));
        assert_eq!(c.claim_as_header_value("n").as_deref(), Some("3"));
        assert_eq!(c.claim_as_header_value("roles").as_deref(), Some("a b"));
        assert_eq!(c.claim_as_header_value("o"), None);
        assert_eq!(c.claim_as_header_value("missing"), None);
    }
}
