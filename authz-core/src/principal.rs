//! Who a token speaks for: its `sub`, or, for tokens without one (client-credentials tokens of
//! many IdPs), the client it was issued to (`client_id`, RFC 9068 / RFC 7662; `azp` where an IdP
//! uses that instead). The filter and the server both name the principal this way, so subject
//! revocation, per-subject limits, the decision cache and the `x-auth-subject` header see the
//! same identity on every path; `x-auth-subject-kind` says which claim it came from.
//!
//! Users and clients are two namespaces: a client whose `client_id` equals a user's `sub` is
//! not that user. Revocations, limits and cached decisions are keyed by [`Principal::key`]: a
//! user's key is its `sub` as it is (what revocations by `sub` have always named), a client's
//! is [`client_key`] (`client_id` + NUL + the id; a `sub` holding a NUL is refused as
//! malformed by `verify::check_purpose`, so no user key can equal a client's). A revoked client
//! also revokes the user tokens issued to it (their `client_id`/`azp`), see
//! [`revocation_keys`].
//!
//! A token is a client's when it has no `sub`, or when the provider's [`ClientGrant`] marker
//! says so (IdPs such as Auth0, Okta, Ory Hydra and Keycloak put a `sub` in client-credentials
//! tokens too: `gty: client-credentials`, a service account's `sub`, …); never because `sub`
//! equals `client_id`.
//!
//! What this module does not do: decide whether a principal may do anything.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Which claim named the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The token's `sub`.
    Subject,
    /// The token had no `sub`: its `client_id` (or `azp`).
    Client,
}

impl PrincipalKind {
    /// The value of the subject-kind context header: the claim the principal came from.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Subject => "sub",
            PrincipalKind::Client => "client_id",
        }
    }
}

/// A token's principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal<'a> {
    pub id: &'a str,
    pub kind: PrincipalKind,
}

/// What every client principal's key starts with.
const CLIENT_KEY_PREFIX: &str = "client_id\u{0}";

/// The revocation, limit and cache key of client `id`.
pub fn client_key(id: &str) -> String {
    format!("{CLIENT_KEY_PREFIX}{id}")
}

/// Whether `key` names a client (see [`client_key`]).
pub fn is_client_key(key: &str) -> bool {
    key.starts_with(CLIENT_KEY_PREFIX)
}

impl Principal<'_> {
    /// The key revocations, limits and cached decisions use for this principal.
    pub fn key(&self) -> String {
        match self.kind {
            PrincipalKind::Subject => self.id.to_owned(),
            PrincipalKind::Client => client_key(self.id),
        }
    }
}

/// The keys whose revocation refuses a token with these claims: its principal's, and for a
/// user token the key of the client it was issued to (`client_id`, else `azp`).
pub fn revocation_keys(subject: Option<&str>, client_id: Option<&str>) -> Vec<String> {
    let Some(principal) = principal(subject, client_id) else {
        return Vec::new();
    };
    let mut keys = vec![principal.key()];
    if let (PrincipalKind::Subject, Some(client)) = (principal.kind, client_id) {
        if !client.is_empty() {
            keys.push(client_key(client));
        }
    }
    keys
}

/// A claim whose value marks a client-credentials token that carries a `sub`
/// (`client_grant: {claim: gty, values: [client-credentials]}` for Auth0).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientGrant {
    /// The claim (a string, or a list of strings).
    pub claim: String,
    /// Values that mark a client token; at least one.
    pub values: Vec<String>,
}

impl ClientGrant {
    /// Whether claims `raw` carry the marker: the claim is one of the values, or a list
    /// holding one.
    pub fn marks(&self, raw: &Map<String, Value>) -> bool {
        let named = |v: &Value| {
            v.as_str()
                .is_some_and(|s| self.values.iter().any(|x| x == s))
        };
        match raw.get(&self.claim) {
            Some(Value::Array(items)) => items.iter().any(named),
            Some(value) => named(value),
            None => false,
        }
    }

    /// Makes a marked token a client's: its `sub` stops naming a user, and names the client
    /// when the token names no `client_id`/`azp`.
    pub fn apply(
        &self,
        raw: &Map<String, Value>,
        subject: &mut Option<String>,
        client_id: &mut Option<String>,
    ) {
        if !self.marks(raw) {
            return;
        }
        let sub = subject.take();
        if client_id.as_deref().is_none_or(str::is_empty) {
            *client_id = sub;
        }
    }

    /// Configuration problems, each with its key under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.claim.is_empty() {
            problems.push(format!("{at}.claim: must name a claim"));
        }
        if self.values.is_empty() || self.values.iter().any(String::is_empty) {
            problems.push(format!(
                "{at}.values: must list at least one non-empty value"
            ));
        }
        problems
    }
}

/// The principal of a token with these claims: `sub` when present and not empty, else the
/// client id, else none.
pub fn principal<'a>(
    subject: Option<&'a str>,
    client_id: Option<&'a str>,
) -> Option<Principal<'a>> {
    match (subject, client_id) {
        (Some(id), _) if !id.is_empty() => Some(Principal {
            id,
            kind: PrincipalKind::Subject,
        }),
        (_, Some(id)) if !id.is_empty() => Some(Principal {
            id,
            kind: PrincipalKind::Client,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_first_then_the_client() {
        assert_eq!(
            principal(Some("alice"), Some("app")),
            Some(Principal {
                id: "alice",
                kind: PrincipalKind::Subject
            })
        );
        assert_eq!(
            principal(None, Some("app")),
            Some(Principal {
                id: "app",
                kind: PrincipalKind::Client
            })
        );
        assert_eq!(
            principal(Some(""), Some("app")).map(|p| p.kind),
            Some(PrincipalKind::Client)
        );
        assert_eq!(principal(None, None), None);
        assert_eq!(principal(Some(""), Some("")), None);
    }

    #[test]
    fn a_client_grant_marker_makes_a_token_with_a_sub_a_clients() {
        let grant = ClientGrant {
            claim: "gty".into(),
            values: vec!["client-credentials".into()],
        };
        let raw = |v: Value| v.as_object().cloned().unwrap();
        // Auth0's client-credentials token: `sub` is "<client>@clients", `azp` the client.
        let (mut sub, mut client) = (Some("app@clients".to_owned()), Some("app".to_owned()));
        grant.apply(
            &raw(serde_json::json!({"gty": "client-credentials"})),
            &mut sub,
            &mut client,
        );
        assert_eq!((sub.as_deref(), client.as_deref()), (None, Some("app")));
        // Without a client claim, the `sub` names the client.
        let (mut sub, mut client) = (Some("svc".to_owned()), None);
        grant.apply(
            &raw(serde_json::json!({"gty": ["x", "client-credentials"]})),
            &mut sub,
            &mut client,
        );
        assert_eq!(
            principal(sub.as_deref(), client.as_deref()).map(|p| p.key()),
            Some(client_key("svc"))
        );
        // Unmarked (another value, or equality of sub and client_id): a user's.
        for claims in [
            serde_json::json!({"gty": "password"}),
            serde_json::json!({}),
        ] {
            let (mut sub, mut client) = (Some("app".to_owned()), Some("app".to_owned()));
            grant.apply(&raw(claims), &mut sub, &mut client);
            assert_eq!(
                principal(sub.as_deref(), client.as_deref()).map(|p| p.kind),
                Some(PrincipalKind::Subject)
            );
        }
        assert_eq!(
            ClientGrant {
                claim: String::new(),
                values: vec![]
            }
            .problems("token.client_grant")
            .len(),
            2
        );
    }

    #[test]
    fn users_and_clients_have_keys_of_their_own() {
        let user = principal(Some("alice"), Some("app")).unwrap();
        let client = principal(None, Some("alice")).unwrap();
        assert_eq!(user.key(), "alice", "a user's key is its sub, as always");
        assert_ne!(
            client.key(),
            user.key(),
            "a client named like a user is not that user"
        );
        assert!(is_client_key(&client.key()) && !is_client_key(&user.key()));
        assert_eq!(
            revocation_keys(Some("alice"), Some("app")),
            vec!["alice".to_owned(), client_key("app")],
            "a user token falls with the client it was issued to"
        );
        assert_eq!(revocation_keys(None, Some("app")), vec![client_key("app")]);
        assert!(revocation_keys(None, None).is_empty());
    }
}
