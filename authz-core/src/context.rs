//! The signed verification context as the policy configures it: the settings both hosts read
//! (`context:`), the claims of an allowed request ([`context_claims`], one function for the
//! filter's local decisions and the server's), and the signing keys as the change feed carries
//! them from the server to the filter ([`FeedKey`]: the server writes them, the filter reads
//! them). The wire format of the context itself lives in the `authz-context` crate, which
//! services use to verify it.
//!
//! What it does not do: hold a clock, derive keys (the server does, from its seed) or cache
//! signed contexts (the filter does, per token, method and route).

use crate::tier::Tier;
use authz_context::{Binding, Claims, ContextSigner};
use serde::Deserialize;
use serde_json::{Map, Value};

pub mod defaults {
    pub const HEADER: &str = authz_context::DEFAULT_HEADER;
    pub const LIFETIME_SECONDS: u64 = 60;
    pub const ISSUER: &str = "authz";
    pub const ROTATE_EVERY_SECONDS: u64 = 3_600;
}

/// `context:` as written (filter JSON and server YAML share it).
#[derive(Debug, Clone, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ContextConfig {
    /// Attach a signed context to allowed requests (default true when the section exists).
    pub enabled: Option<bool>,
    /// The header it travels in (always stripped from clients).
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::HEADER)))]
    pub header: Option<String>,
    /// `iss`: the authorization layer's name, as services expect it.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::ISSUER)))]
    pub issuer: Option<String>,
    /// Required: `aud`, the service the contexts are for.
    pub audience: Option<String>,
    /// Lifetime of a context, 1–300 seconds. A context is reused for one token, method and
    /// route while at least half of it is left.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::LIFETIME_SECONDS)))]
    pub lifetime_seconds: Option<u64>,
    /// Claims of the caller's token copied into the context's `ext` (string, number, boolean
    /// or array values).
    #[serde(default)]
    pub claims: Vec<String>,
    /// The server's (the filter's keys come from the change feed): a file of at least 32
    /// random bytes the signing keys are derived from; every replica reads the same one.
    pub signing_seed_file: Option<String>,
    /// The server's, instead of `signing_seed_file`: the seed itself, at least 32 characters
    /// (e.g. `"${AUTHZ_CONTEXT_SEED}"` from a Secret).
    pub signing_seed: Option<String>,
    /// The server's: how often the signing key changes, 2–86400 seconds.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::ROTATE_EVERY_SECONDS)))]
    pub rotate_every_seconds: Option<u64>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// `context:`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextSettings {
    pub header: String,
    pub issuer: String,
    pub audience: String,
    pub lifetime_seconds: u64,
    pub claims: Vec<String>,
}

impl ContextConfig {
    /// The settings, or `None` when switched off; every problem is added to `problems` with
    /// `at` before it. `taken`: header names the context's may not be (lower-case; see
    /// `config::context_header_taken`).
    pub fn settings(
        &self,
        at: &str,
        taken: &[&str],
        problems: &mut Vec<String>,
    ) -> Option<ContextSettings> {
        for name in self.unknown.keys() {
            problems.push(format!("{at}: unknown field \"{name}\""));
        }
        if self.enabled == Some(false) {
            return None;
        }
        let header = self
            .header
            .clone()
            .unwrap_or_else(|| defaults::HEADER.into())
            .to_ascii_lowercase();
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            problems.push(format!(
                "{at}.header: \"{header}\" is not a header name (letters, digits and '-')"
            ));
        }
        if taken.contains(&header.as_str()) {
            problems.push(format!(
                "{at}.header: \"{header}\" is reserved or another header the filter or the server sets"
            ));
        }
        let lifetime_seconds = self.lifetime_seconds.unwrap_or(defaults::LIFETIME_SECONDS);
        if !(1..=300).contains(&lifetime_seconds) {
            problems.push(format!(
                "{at}.lifetime_seconds: {lifetime_seconds} is outside 1–300"
            ));
        }
        let audience = self.audience.clone().unwrap_or_default();
        if audience.is_empty() {
            problems.push(format!(
                "{at}: \"audience\" is required (the service the contexts are for)"
            ));
        }
        let issuer = self
            .issuer
            .clone()
            .unwrap_or_else(|| defaults::ISSUER.into());
        if issuer.is_empty() {
            problems.push(format!("{at}.issuer: empty"));
        }
        Some(ContextSettings {
            header,
            issuer,
            audience,
            lifetime_seconds,
            claims: self.claims.clone(),
        })
    }
}

/// What was decided for an allowed request, as a context states it.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    pub subject: &'a str,
    /// `sub` or `client_id`.
    pub subject_kind: &'a str,
    /// The caller's token issuer.
    pub idp: &'a str,
    pub scopes: &'a [String],
    pub tier: Tier,
    /// The tenant the route's tenant rule checked.
    pub tenant: Option<&'a str>,
    pub policy_version: u64,
    pub method: &'a str,
    pub route: &'a str,
    /// The caller's token claims, for the configured copies.
    pub token_claims: Option<&'a Map<String, Value>>,
    /// When the caller's token expires (seconds): a context never outlives it.
    pub token_expires_at: Option<i64>,
}

/// A copied claim larger than this (as JSON) is left out, and copies stop at
/// [`MAX_COPIED_BYTES`] in all: a context stays far below what verifiers accept
/// (`authz_context::MAX_CONTEXT_BYTES`).
pub const MAX_COPIED_CLAIM_BYTES: usize = 1_024;
/// See [`MAX_COPIED_CLAIM_BYTES`].
pub const MAX_COPIED_BYTES: usize = 4_096;

/// The claims of the context for `decided`, made at `now_seconds`.
pub fn context_claims(
    settings: &ContextSettings,
    decided: &Decided<'_>,
    now_seconds: u64,
) -> Claims {
    let mut ext = Map::new();
    let mut copied_bytes = 0;
    if let Some(token_claims) = decided.token_claims {
        for name in &settings.claims {
            if let Some(
                value @ (Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Array(_)),
            ) = token_claims.get(name)
            {
                let size = name.len() + value.to_string().len();
                if size <= MAX_COPIED_CLAIM_BYTES && copied_bytes + size <= MAX_COPIED_BYTES {
                    copied_bytes += size;
                    ext.insert(name.clone(), value.clone());
                }
            }
        }
    }
    let lifetime_end = now_seconds.saturating_add(settings.lifetime_seconds);
    let exp = match decided.token_expires_at {
        Some(token_exp) => lifetime_end.min(u64::try_from(token_exp).unwrap_or(0)),
        None => lifetime_end,
    };
    Claims {
        iss: settings.issuer.clone(),
        aud: settings.audience.clone(),
        sub: decided.subject.to_owned(),
        sub_kind: decided.subject_kind.to_owned(),
        idp: decided.idp.to_owned(),
        scope: decided.scopes.join(" "),
        tier: decided.tier.as_str().to_owned(),
        tenant: decided.tenant.map(str::to_owned),
        pv: decided.policy_version,
        iat: now_seconds,
        exp,
        req: Binding {
            m: decided.method.to_ascii_uppercase(),
            r: decided.route.to_owned(),
        },
        ext,
    }
}

/// A signing key as the change feed carries it (`context_keys` in a feed answer): its secret,
/// and the time window in which it signs (seconds since the epoch, `from` inclusive).
#[derive(Debug, Clone)]
pub struct FeedKey {
    pub signer: ContextSigner,
    pub from: u64,
    pub until: u64,
}

/// The `context_keys` member of a feed answer.
pub fn feed_keys_wire(keys: &[FeedKey]) -> Vec<crate::feed::WireKey> {
    keys.iter()
        .map(|k| crate::feed::WireKey {
            kid: k.signer.kid().to_owned(),
            secret: k.signer.secret_base64(),
            from: k.from,
            until: k.until,
        })
        .collect()
}

/// The keys of a feed answer's `context_keys` (absent: none). A malformed set is an error:
/// the filter keeps the keys it has.
pub fn read_feed_keys(keys: &crate::feed::ContextKeys) -> Result<Vec<FeedKey>, String> {
    use crate::feed::ContextKeys;
    let keys = match keys {
        ContextKeys::Absent => return Ok(Vec::new()),
        ContextKeys::Malformed(why) => return Err(why.clone()),
        ContextKeys::Keys(keys) => keys,
    };
    keys.iter()
        .map(|key| {
            Ok(FeedKey {
                signer: ContextSigner::from_base64(&key.kid, &key.secret)
                    .map_err(|e| e.to_string())?,
                from: key.from,
                until: key.until,
            })
        })
        .collect()
}

/// The key that signs at `now_seconds`: the latest whose window holds it.
pub fn signing_key(keys: &[FeedKey], now_seconds: u64) -> Option<&ContextSigner> {
    keys.iter()
        .filter(|k| k.from <= now_seconds && now_seconds < k.until)
        .max_by_key(|k| k.from)
        .map(|k| &k.signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_context::{KeySet, Verifier};
    use serde_json::json;

    fn settings() -> ContextSettings {
        let config: ContextConfig = serde_json::from_value(
            json!({"audience": "orders", "claims": ["email", "roles", "obj"]}),
        )
        .unwrap();
        let mut problems = Vec::new();
        let settings = config.settings("context", &[], &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        settings
    }

    /// A decision with nothing but its route: `GET r` for `a`.
    fn plain(token_claims: Option<&Map<String, Value>>) -> Decided<'_> {
        Decided {
            subject: "a",
            subject_kind: "sub",
            idp: "i",
            scopes: &[],
            tier: Tier::Authenticated,
            tenant: None,
            policy_version: 0,
            method: "GET",
            route: "r",
            token_claims,
            token_expires_at: None,
        }
    }

    #[test]
    fn claims_state_the_decision_and_copy_only_configured_plain_claims() {
        let token = json!({"email": "a@x", "roles": ["r1"], "obj": {"a": 1}, "secret": "s"});
        let scopes = vec!["read".to_owned(), "write".to_owned()];
        let decided = Decided {
            subject: "alice",
            subject_kind: "sub",
            idp: "https://idp",
            scopes: &scopes,
            tier: Tier::StandardWrite,
            tenant: Some("acme"),
            policy_version: 4,
            method: "post",
            route: "items",
            token_claims: token.as_object(),
            token_expires_at: Some(2000),
        };
        let claims = context_claims(&settings(), &decided, 1000);
        assert_eq!((claims.iat, claims.exp), (1000, 1060));
        let ending = Decided {
            token_expires_at: Some(1030),
            ..decided
        };
        assert_eq!(
            context_claims(&settings(), &ending, 1000).exp,
            1030,
            "never past the token's exp"
        );
        assert_eq!(claims.req.m, "POST");
        assert_eq!(claims.scope, "read write");
        assert_eq!(claims.tier, "standard_write");
        assert_eq!(claims.tenant.as_deref(), Some("acme"));
        assert_eq!(
            Value::Object(claims.ext),
            json!({"email": "a@x", "roles": ["r1"]})
        );
    }

    #[test]
    fn copied_claims_stay_small() {
        let big = "x".repeat(MAX_COPIED_CLAIM_BYTES);
        let mid = "y".repeat(900);
        let token = json!({"email": big, "roles": [mid], "obj": 1});
        let mut settings = settings();
        settings.claims = (0..6)
            .map(|i| format!("c{i}"))
            .chain(["email".into()])
            .collect();
        let mut token = token.as_object().unwrap().clone();
        for i in 0..6 {
            token.insert(format!("c{i}"), json!("z".repeat(900)));
        }
        let claims = context_claims(&settings, &plain(Some(&token)), 1);
        assert!(
            !claims.ext.contains_key("email"),
            "larger than one claim may be"
        );
        assert_eq!(claims.ext.len(), 4, "copies stop at the total");
        assert!(Value::Object(claims.ext).to_string().len() <= MAX_COPIED_BYTES);
    }

    #[test]
    fn bad_settings_are_all_named() {
        let config: ContextConfig = serde_json::from_value(
            json!({"header": "x auth", "lifetime_seconds": 0, "issuer": "", "extra": 1}),
        )
        .unwrap();
        let mut problems = Vec::new();
        config.settings("context", &[], &mut problems);
        assert_eq!(problems.len(), 5, "{problems:?}");
        for taken in [
            "Authorization",
            "host",
            "x-auth-subject",
            "x-authz-policy-version",
        ] {
            let config: ContextConfig =
                serde_json::from_value(json!({"header": taken, "audience": "a"})).unwrap();
            let mut problems = Vec::new();
            config.settings(
                "context",
                &[
                    "authorization",
                    "host",
                    "x-auth-subject",
                    "x-authz-policy-version",
                ],
                &mut problems,
            );
            assert_eq!(problems.len(), 1, "{taken}: {problems:?}");
        }
        let off: ContextConfig = serde_json::from_value(json!({"enabled": false})).unwrap();
        assert!(off.settings("context", &[], &mut Vec::new()).is_none());
    }

    #[test]
    fn feed_keys_round_trip_and_the_current_window_signs() {
        let keys = vec![
            FeedKey {
                signer: ContextSigner::new("e1", &[1; 32]),
                from: 100,
                until: 200,
            },
            FeedKey {
                signer: ContextSigner::new("e2", &[2; 32]),
                from: 200,
                until: 300,
            },
        ];
        // Through the wire: what the server writes in front of an answer, as the filter reads it.
        let body = format!(
            "{}\"format\":2,\"version\":1,\"policy_version\":0}}",
            crate::feed::FeedAnswer::keys_prefix(&feed_keys_wire(&keys))
        );
        let answer = crate::feed::FeedAnswer::from_slice(body.as_bytes()).unwrap();
        let read = read_feed_keys(&answer.context_keys).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(signing_key(&read, 150).map(|s| s.kid()), Some("e1"));
        assert_eq!(signing_key(&read, 200).map(|s| s.kid()), Some("e2"));
        assert!(signing_key(&read, 300).is_none());
        assert!(signing_key(&read, 99).is_none());
        let signed =
            signing_key(&read, 250)
                .unwrap()
                .sign(&context_claims(&settings(), &plain(None), 250));
        let public = KeySet::from_keys([("e2".to_owned(), keys[1].signer.verifying_key())]);
        assert!(Verifier::new("authz", "orders")
            .verify(
                &signed,
                &public,
                &authz_context::Expected::new("GET", "r"),
                251
            )
            .is_ok());
        let keys_of = |body: &str| {
            read_feed_keys(
                &crate::feed::FeedAnswer::from_slice(body.as_bytes())
                    .unwrap()
                    .context_keys,
            )
        };
        assert!(keys_of(r#"{"version":1,"policy_version":0}"#)
            .unwrap()
            .is_empty());
        assert!(keys_of(
            r#"{"version":1,"policy_version":0,"context_keys":[{"kid":"x","secret":"AA","from":1,"until":2}]}"#
        )
        .is_err());
        assert!(keys_of(r#"{"version":1,"policy_version":0,"context_keys":3}"#).is_err());
    }
}
