//! The signed verification context: a short-lived JWS the authorization layer (the Envoy filter
//! or the ext_authz server) attaches to a request it allowed, so the service behind it reads who
//! called and what was decided without verifying the caller's token again and without trusting
//! its network position.
//!
//! This crate owns the context's wire format ([`Claims`], the JWS header) and both sides of it:
//! [`Verifier`] for services (signature, issuer, audience, lifetime and the request binding),
//! and, behind the `sign` feature, the signer the authorization layer uses. With the `tower`
//! feature, [`layer::ContextLayer`] refuses requests that carry no valid context.
//!
//! # The binding
//! A context names the request it was made for: its method and the name of the policy route
//! that decided it (`req: {m, r}`), and on a route with a tenant rule the tenant it checked
//! (`tenant`, which [`Expected::tenant`] compares with the tenant the request is for). A context
//! captured on one route, method or tenant is refused on any other; on another path of the same
//! route and tenant it asserts only what the policy decided for every such path. Binding the route rather than a hash of the
//! path lets a hot token reuse one signed context across a route's paths (a list and its
//! items), and survives Envoy rewriting the path after the filter ran (`prefix_rewrite`), which
//! a path hash would not.
//!
//! # Keys
//! Ed25519 (`alg: EdDSA`): the cheapest signature to make in Wasm of those services can verify
//! with standard JOSE libraries (measured in `make bench`), deterministic (no random source
//! needed in a proxy), with 32-byte keys derived from a seed and 64-byte signatures. Services
//! read the public keys as a JWKS ([`KeySet::from_jwks`]) from the authorization server's admin
//! port, which publishes each key one rotation before it signs and keeps it until the last
//! context it signed has expired.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;

#[cfg(feature = "tower")]
pub mod layer;
#[cfg(feature = "sign")]
mod sign;
#[cfg(feature = "sign")]
pub use sign::{ContextSigner, SigningKeyError};

/// The header a context travels in unless configured otherwise.
pub const DEFAULT_HEADER: &str = "x-auth-context";
/// The JWS `typ` of a context (RFC 8725 §3.11: explicit typing, so no other JWT passes as one).
pub const TYP: &str = "authz-context+jwt";
/// The only JWS algorithm a context is signed with.
pub const ALG: &str = "EdDSA";
/// A longer header value is refused before it is decoded.
pub const MAX_CONTEXT_BYTES: usize = 8 * 1024;

/// What a context says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who signed it: the authorization layer's name.
    pub iss: String,
    /// The service it was made for.
    pub aud: String,
    /// The caller: the token's subject, or its client for client tokens.
    pub sub: String,
    /// Which claim `sub` came from (`sub` or `client_id`).
    pub sub_kind: String,
    /// The issuer of the caller's token.
    pub idp: String,
    /// Granted scopes, space-delimited as in OAuth (empty when none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The route's risk tier (`authenticated`, `standard_write`, `privileged`, …).
    pub tier: String,
    /// The tenant the route's tenant rule checked, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The policy version the decision was made under.
    pub pv: u64,
    /// When the decision was made (seconds since the epoch).
    pub iat: u64,
    /// When the context stops being valid (seconds since the epoch).
    pub exp: u64,
    /// The request it was made for.
    pub req: Binding,
    /// Claims of the caller's token the policy copies (`context.claims`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub ext: Map<String, Value>,
}

impl Claims {
    /// Whether `scope` is granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// The request a context was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The method, upper-case.
    pub m: String,
    /// The name of the policy route that decided it.
    pub r: String,
}

/// Why a context was refused (for the service's logs; answer every refusal the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    TooLarge,
    Malformed,
    /// The header is not `{alg: EdDSA, typ: authz-context+jwt, kid}` (or carries `crit`).
    WrongHeader,
    UnknownKey,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    Expired,
    NotYetValid,
    /// `exp - iat` is longer than the verifier accepts.
    TooLong,
    /// Made for another method or route.
    WrongRequest,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::TooLarge => "too_large",
            Refusal::Malformed => "malformed",
            Refusal::WrongHeader => "wrong_header",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::TooLong => "too_long",
            Refusal::WrongRequest => "wrong_request",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Refusal {}

/// The JWS header of a context.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// The public keys contexts are verified with, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

/// Why a JWKS could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError(pub String);

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "context JWKS: {}", self.0)
    }
}

impl std::error::Error for JwksError {}

impl KeySet {
    /// The Ed25519 keys (`kty: OKP`, `crv: Ed25519`) of a JWKS document; other keys are skipped.
    /// A document that is not a JWKS, or an Ed25519 key that is not a valid point, is an error.
    pub fn from_jwks(document: &[u8]) -> Result<KeySet, JwksError> {
        let value: Value =
            serde_json::from_slice(document).map_err(|e| JwksError(format!("not JSON: {e}")))?;
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwksError("no `keys` array".into()))?;
        let mut set = KeySet::default();
        for key in keys {
            let field = |name: &str| key.get(name).and_then(Value::as_str);
            if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
                continue;
            }
            let kid = field("kid").ok_or_else(|| JwksError("an Ed25519 key has no kid".into()))?;
            let x = field("x")
                .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
                .and_then(|x| <[u8; 32]>::try_from(x.as_slice()).ok())
                .ok_or_else(|| JwksError(format!("key {kid}: `x` is not 32 base64url bytes")))?;
            let key = VerifyingKey::from_bytes(&x)
                .map_err(|_| JwksError(format!("key {kid}: not an Ed25519 point")))?;
            set.keys.entry(kid.to_owned()).or_insert(key);
        }
        Ok(set)
    }

    /// A set of the given keys.
    pub fn from_keys(keys: impl IntoIterator<Item = (String, VerifyingKey)>) -> KeySet {
        KeySet {
            keys: keys.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }
}

/// The JWKS entry of a public key.
pub fn jwk(kid: &str, key: &VerifyingKey) -> Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": ALG,
        "use": "sig",
        "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(key.to_bytes()),
    })
}

/// The request a service is serving, as a context must name it.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The request's method (compared without ASCII case, as the policy's route table does).
    pub method: &'a str,
    /// The policy route this request is on.
    pub route: &'a str,
    /// On a route with a tenant rule: the tenant this request is for (`tenant` must name it).
    pub tenant: Option<&'a str>,
}

impl<'a> Expected<'a> {
    /// A request on `route` with no tenant to check.
    pub fn new(method: &'a str, route: &'a str) -> Expected<'a> {
        Expected {
            method,
            route,
            tenant: None,
        }
    }

    fn matches(&self, claims: &Claims) -> bool {
        claims.req.m.eq_ignore_ascii_case(self.method)
            && claims.req.r == self.route
            && self
                .tenant
                .is_none_or(|tenant| claims.tenant.as_deref() == Some(tenant))
    }
}

/// What a service expects of the contexts it accepts.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The authorization layer's name (`iss`).
    pub issuer: String,
    /// This service's name (`aud`).
    pub audience: String,
    /// Clock skew allowed on `iat` and `exp`, seconds.
    pub leeway_seconds: u64,
    /// The longest lifetime (`exp - iat`) accepted, seconds.
    pub max_lifetime_seconds: u64,
}

impl Verifier {
    /// A verifier for contexts from `issuer` to `audience`, with 5 s of leeway and lifetimes of
    /// at most 5 minutes.
    pub fn new(issuer: &str, audience: &str) -> Verifier {
        Verifier {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_seconds: 5,
            max_lifetime_seconds: 300,
        }
    }

    /// The claims of `context` if it is signed by one of `keys`, made by this issuer for this
    /// audience, valid at `now_seconds`, and made for `request`.
    pub fn verify(
        &self,
        context: &str,
        keys: &KeySet,
        request: &Expected<'_>,
        now_seconds: u64,
    ) -> Result<Claims, Refusal> {
        let claims = self.verify_unbound(context, keys, now_seconds)?;
        if !request.matches(&claims) {
            return Err(Refusal::WrongRequest);
        }
        Ok(claims)
    }

    /// [`Verifier::verify`] without the request binding, for callers that check `req`
    /// themselves.
    pub fn verify_unbound(
        &self,
        context: &str,
        keys: &KeySet,
        now_seconds: u64,
    ) -> Result<Claims, Refusal> {
        if context.is_empty() {
            return Err(Refusal::Missing);
        }
        if context.len() > MAX_CONTEXT_BYTES {
            return Err(Refusal::TooLarge);
        }
        let mut parts = context.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Malformed);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| Refusal::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(header_b64)?).map_err(|_| Refusal::WrongHeader)?;
        if header.alg != ALG || header.typ != TYP {
            return Err(Refusal::WrongHeader);
        }
        let key = keys.keys.get(&header.kid).ok_or(Refusal::UnknownKey)?;
        let signature =
            Signature::from_slice(&decode(signature_b64)?).map_err(|_| Refusal::Malformed)?;
        let signed_len = header_b64.len() + 1 + claims_b64.len();
        let signed = context.get(..signed_len).ok_or(Refusal::Malformed)?;
        key.verify_strict(signed.as_bytes(), &signature)
            .map_err(|_| Refusal::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(claims_b64)?).map_err(|_| Refusal::Malformed)?;
        self.check_claims(&claims, now_seconds)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Claims, now_seconds: u64) -> Result<(), Refusal> {
        if claims.iss != self.issuer {
            return Err(Refusal::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(Refusal::WrongAudience);
        }
        if claims.iat > now_seconds.saturating_add(self.leeway_seconds) {
            return Err(Refusal::NotYetValid);
        }
        if now_seconds >= claims.exp.saturating_add(self.leeway_seconds) {
            return Err(Refusal::Expired);
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_lifetime_seconds {
            return Err(Refusal::TooLong);
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "sign"))]
mod tests;
