//! RFC 7662 token introspection responses, parsed strictly.
//!
//! `active` must be present and a JSON boolean; an active response's registered members must
//! have their registered types. Anything else is an error, which callers treat as an IdP
//! failure (fail closed), never as "inactive". The batch format this project defines (a JSON
//! array of request tokens in, an array of responses in the same order out) is parsed by
//! [`parse_batch`].
//!
//! No I/O: callers bring the bytes.

use serde_json::{Map, Value};

/// What the IdP said about one token.
#[derive(Debug, Clone, PartialEq)]
pub struct Introspection {
    pub active: bool,
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub expires_at: Option<i64>,
    pub issued_at: Option<i64>,
    pub auth_time: Option<i64>,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub jti: Option<String>,
    /// Every member, for claim requirements.
    pub raw: Map<String, Value>,
}

/// Why an introspection response is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectionError {
    #[error("response is not json")]
    NotJson,
    #[error("response is not a json object")]
    NotObject,
    #[error("\"active\" is missing or not a boolean")]
    ActiveNotBoolean,
    #[error("member \"{0}\" has the wrong type")]
    WrongType(&'static str),
    #[error("batch response does not match the request ({0})")]
    BatchShape(String),
}

fn string(
    raw: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, IntrospectionError> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(IntrospectionError::WrongType(name)),
    }
}

fn number(raw: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, IntrospectionError> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(IntrospectionError::WrongType(name)),
        Some(_) => Err(IntrospectionError::WrongType(name)),
    }
}

impl Introspection {
    /// Whether the IdP says this is a refresh token, not an access token: Ory Hydra's
    /// `token_use: refresh_token`, or RFC 7662's `token_type` naming one
    /// (`refresh_token`, or RFC 8693's `urn:ietf:params:oauth:token-type:refresh_token`).
    /// An active refresh token is not a credential for an API: refused.
    pub fn is_refresh_token(&self) -> bool {
        let says = |member: &str| {
            self.raw
                .get(member)
                .and_then(Value::as_str)
                .is_some_and(|v| {
                    v.eq_ignore_ascii_case("refresh_token")
                        || v.eq_ignore_ascii_case("urn:ietf:params:oauth:token-type:refresh_token")
                })
        };
        // Keycloak's introspection names its refresh tokens by `typ`.
        let keycloak = self
            .raw
            .get("typ")
            .and_then(Value::as_str)
            .is_some_and(|t| {
                t.eq_ignore_ascii_case("Refresh") || t.eq_ignore_ascii_case("Offline")
            });
        says("token_use") || says("token_type") || keycloak
    }

    /// Parses one response object.
    pub fn from_value(value: Value) -> Result<Introspection, IntrospectionError> {
        let Value::Object(raw) = value else {
            return Err(IntrospectionError::NotObject);
        };
        let active = match raw.get("active") {
            Some(Value::Bool(b)) => *b,
            _ => return Err(IntrospectionError::ActiveNotBoolean),
        };
        if !active {
            // Nothing else about an inactive token matters (RFC 7662 §2.2).
            return Ok(Introspection::inactive());
        }
        let scopes = string(&raw, "scope")?
            .map(|s| {
                s.split(' ')
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let amr = match raw.get("amr") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .ok_or(IntrospectionError::WrongType("amr"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(IntrospectionError::WrongType("amr")),
        };
        Ok(Introspection {
            active,
            subject: string(&raw, "sub")?,
            scopes,
            // As in a JWT's claims: `client_id`, else `azp` (IdPs that report only that).
            client_id: match string(&raw, "client_id")? {
                Some(id) => Some(id),
                None => string(&raw, "azp")?,
            },
            expires_at: number(&raw, "exp")?,
            issued_at: number(&raw, "iat")?,
            auth_time: number(&raw, "auth_time")?,
            acr: string(&raw, "acr")?,
            amr,
            jti: string(&raw, "jti")?,
            raw,
        })
    }

    /// Parses one response body.
    pub fn parse(body: &[u8]) -> Result<Introspection, IntrospectionError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| IntrospectionError::NotJson)?;
        Introspection::from_value(value)
    }

    /// An inactive result.
    pub fn inactive() -> Introspection {
        Introspection {
            active: false,
            subject: None,
            scopes: Vec::new(),
            client_id: None,
            expires_at: None,
            issued_at: None,
            auth_time: None,
            acr: None,
            amr: Vec::new(),
            jti: None,
            raw: Map::new(),
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The result as [`crate::Claims`], so route requirements apply to it unchanged.
    /// The answer a verified JWT access token stands for: active, with its own claims (so
    /// purpose, revocation, requirements and step-up read it like an introspection answer).
    pub fn from_verified_claims(claims: &crate::Claims) -> Introspection {
        let mut raw = claims.raw.clone();
        raw.insert("active".into(), Value::Bool(true));
        let mut answer = Introspection::from_value(Value::Object(raw)).unwrap_or_else(|_| {
            // A verified payload with an odd registered member type: keep what `Claims` read.
            Introspection {
                active: true,
                ..Introspection::inactive()
            }
        });
        answer.active = true;
        answer.subject = claims.subject.clone();
        answer.scopes = claims.scopes.clone();
        answer.client_id = claims.client_id.clone();
        answer.expires_at = claims.expires_at;
        answer.issued_at = claims.issued_at;
        answer
    }

    /// Applies the provider's client-credentials marker: a marked answer's principal is the
    /// client ([`crate::principal::ClientGrant::apply`]).
    pub fn with_client_grant(mut self, grant: Option<&crate::principal::ClientGrant>) -> Self {
        if let Some(grant) = grant {
            grant.apply(&self.raw, &mut self.subject, &mut self.client_id);
        }
        self
    }

    /// Whether a user signed in for this token: it names a `sub` (client-credentials tokens
    /// without one are the client's). Never decided by comparing `sub` with `client_id`: a user
    /// whose `sub` equals a client's id would skip step-up.
    pub fn is_user_token(&self) -> bool {
        self.subject.as_deref().is_some_and(|sub| !sub.is_empty())
    }

    /// The keys whose revocation refuses this token ([`crate::principal::revocation_keys`]).
    pub fn revocation_keys(&self) -> Vec<String> {
        crate::principal::revocation_keys(self.subject.as_deref(), self.client_id.as_deref())
    }

    /// Who the token speaks for ([`crate::principal`]).
    pub fn principal(&self) -> Option<crate::principal::Principal<'_>> {
        crate::principal::principal(self.subject.as_deref(), self.client_id.as_deref())
    }

    pub fn as_claims(&self) -> crate::Claims {
        // `aud` may be a string or an array (RFC 7662 §2.2, RFC 7519 §4.1.3); entries of any
        // other type name no audience of ours, so they can never satisfy an audience rule.
        let audiences = match self.raw.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().unwrap_or("\u{0}not-an-audience").to_owned())
                .collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(_) => vec!["\u{0}not-an-audience".to_owned()],
        };
        let issuer = match self.raw.get("iss") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(_) => Some("\u{0}not-an-issuer".to_owned()),
        };
        let not_before = self.raw.get("nbf").and_then(Value::as_i64);
        crate::Claims {
            issuer,
            subject: self.subject.clone(),
            audiences,
            expires_at: self.expires_at,
            not_before,
            issued_at: self.issued_at,
            scopes: self.scopes.clone(),
            client_id: self.client_id.clone(),
            raw: self.raw.clone(),
        }
    }
}

/// Parses a batch response: a JSON array with one response per requested token, in order.
pub fn parse_batch(body: &[u8], expected: usize) -> Result<Vec<Introspection>, IntrospectionError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| IntrospectionError::NotJson)?;
    let Value::Array(items) = value else {
        return Err(IntrospectionError::BatchShape("not an array".into()));
    };
    if items.len() != expected {
        return Err(IntrospectionError::BatchShape(format!(
            "{} results for {expected} tokens",
            items.len()
        )));
    }
    items.into_iter().map(Introspection::from_value).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_must_be_a_boolean() {
        assert_eq!(
            Introspection::parse(b"{}").unwrap_err(),
            IntrospectionError::ActiveNotBoolean
        );
        assert_eq!(
            Introspection::parse(br#"{"active":"true"}"#).unwrap_err(),
            IntrospectionError::ActiveNotBoolean
        );
        assert_eq!(
            Introspection::parse(br#"{"active":1}"#).unwrap_err(),
            IntrospectionError::ActiveNotBoolean
        );
        assert_eq!(
            Introspection::parse(b"<html>").unwrap_err(),
            IntrospectionError::NotJson
        );
        assert_eq!(
            Introspection::parse(b"[]").unwrap_err(),
            IntrospectionError::NotObject
        );
    }

    #[test]
    fn refresh_tokens_are_known_by_token_use_or_token_type() {
        for body in [
            r#"{"active":true,"token_use":"refresh_token"}"#,
            r#"{"active":true,"token_type":"refresh_token"}"#,
            r#"{"active":true,"token_type":"urn:ietf:params:oauth:token-type:refresh_token"}"#,
            r#"{"active":true,"typ":"Refresh"}"#,
            r#"{"active":true,"typ":"Offline"}"#,
        ] {
            assert!(
                Introspection::parse(body.as_bytes())
                    .unwrap()
                    .is_refresh_token(),
                "{body}"
            );
        }
        for body in [
            r#"{"active":true,"token_use":"access_token"}"#,
            r#"{"active":true,"token_type":"Bearer"}"#,
            r#"{"active":true}"#,
        ] {
            assert!(
                !Introspection::parse(body.as_bytes())
                    .unwrap()
                    .is_refresh_token(),
                "{body}"
            );
        }
    }

    #[test]
    fn inactive_ignores_everything_else() {
        let r = Introspection::parse(br#"{"active":false,"sub":7}"#).unwrap();
        assert!(!r.active);
        assert_eq!(r.subject, None);
    }

    #[test]
    fn active_members_are_typed() {
        let r = Introspection::parse(
            br#"{"active":true,"sub":"alice","scope":"read admin","exp":100,"auth_time":90,"acr":"mfa","amr":["pwd","otp"],"jti":"j1","tenant":"acme"}"#,
        )
        .unwrap();
        assert!(r.active && r.has_scope("admin"));
        assert_eq!(
            (r.auth_time, r.acr.as_deref(), r.jti.as_deref()),
            (Some(90), Some("mfa"), Some("j1"))
        );
        assert_eq!(r.amr, vec!["pwd", "otp"]);
        assert_eq!(r.as_claims().raw["tenant"], "acme");
        assert_eq!(
            Introspection::parse(br#"{"active":true,"exp":"soon"}"#).unwrap_err(),
            IntrospectionError::WrongType("exp")
        );
        assert_eq!(
            Introspection::parse(br#"{"active":true,"scope":["a"]}"#).unwrap_err(),
            IntrospectionError::WrongType("scope")
        );
    }

    #[test]
    fn batches_must_match_the_request() {
        let ok = parse_batch(br#"[{"active":true,"sub":"a"},{"active":false}]"#, 2).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(parse_batch(br#"[{"active":true}]"#, 2).is_err());
        assert!(parse_batch(br#"{"active":true}"#, 1).is_err());
        assert!(parse_batch(br#"[{"active":true},{}]"#, 2).is_err());
    }
}
