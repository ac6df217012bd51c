//! JWS compact-serialization parsing and JWT verification against a provider's keys.
//!
//! Order of checks: size, shape (three strict base64url segments), header (`alg` known and not
//! `none`, no `crit`), payload JSON, issuer → provider, key choice (`kid`, then the key/alg
//! agreement of [`crate::keys`]), signature, then `typ` and the time and audience claims.
//! Unverified content is used for one thing only: picking the provider and key to verify with.
//!
//! What this module does not do: fetch keys, read a clock (`now` is a parameter), or decide
//! what the caller answers; every failure is a [`VerifyFailure`] the caller maps to a response.

use crate::claims::Claims;
use crate::keys::{parse_algorithm, KeySet, VerificationKey};
use crate::rsa_verify::RsaHash;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::Value;

/// The longest token accepted unless configured otherwise, in bytes (the filter's
/// `max_token_bytes` and the server's `token.max_bytes`): larger ones are refused before any
/// parsing, verification or introspection.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// The limits a configured maximum token lifetime (seconds) must stay within.
pub const MAX_LIFETIME_RANGE: std::ops::RangeInclusive<u64> = 60..=31_536_000;
/// [`MAX_LIFETIME_RANGE`] as a configuration error says it.
pub const MAX_LIFETIME_RANGE_TEXT: &str = "must be between 60 and 31536000 seconds";
/// The limits a configured token size must stay within.
pub const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=65_536;
/// [`TOKEN_BYTES_RANGE`] as a configuration error says it.
pub const TOKEN_BYTES_RANGE_TEXT: &str = "must be between 256 and 65536";

/// What one trusted issuer's tokens must satisfy. Keys are held separately (they change at
/// run time); see [`verify`].
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    /// Accepted audiences; a token must name at least one of them.
    pub audiences: Vec<String>,
    pub clock_skew_seconds: i64,
    pub require_expiration: bool,
    /// When set, the header `typ` must equal it (an `application/` prefix is allowed).
    pub required_typ: Option<String>,
    /// Refuse tokens that carry an ID token's markers (`nonce`, `at_hash`, `c_hash`,
    /// `s_hash`): for IdPs whose access tokens have `typ: JWT` like their ID tokens.
    pub refuse_id_tokens: bool,
    /// Longest accepted lifetime (`exp` − `iat`), seconds: a token living longer is refused,
    /// and one without `exp` or `iat` too. It bounds how long a
    /// revocation must be kept (a revocation whose token's expiry is not known, and a
    /// subject's), as Envoy's `jwt_authn` `max_lifetime` bounds its tokens.
    pub max_lifetime_seconds: Option<i64>,
    /// Marks client-credentials tokens that carry a `sub` ([`crate::principal::ClientGrant`]).
    pub client_grant: Option<crate::principal::ClientGrant>,
    /// HMAC key from an inline secret, the only way HS* tokens are accepted.
    pub hmac_key: Option<VerificationKey>,
}

/// A token whose signature and claims passed.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub provider: usize,
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    pub claims: Claims,
    /// SHA-256 of the token's compact form (a revocation by `token_hash` names it), computed
    /// once per verification so cached verifications can be screened without hashing again.
    pub digest: [u8; 32],
    /// [`crate::token_hash::signed_part_digest`]: what a revocation by `token` names, the same
    /// for every signature encoding of the same content.
    pub signed_digest: [u8; 32],
}

/// Why a token was not accepted. Never shown to clients; logged and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyFailure {
    TooLarge,
    Malformed(&'static str),
    AlgNone,
    UnsupportedAlgorithm,
    CriticalHeader,
    UnknownIssuer,
    /// The provider's keys are not loaded yet.
    KeysUnavailable {
        provider: usize,
    },
    /// No key carries the token's `kid` (perhaps the issuer rotated keys).
    UnknownKey {
        provider: usize,
        kid: String,
    },
    /// No key the token could name accepts its algorithm (a key behind a reused `kid` may have
    /// changed type).
    AlgorithmKeyMismatch {
        provider: usize,
    },
    /// No key verified the signature (the issuer may have rotated the key behind a `kid`).
    BadSignature {
        provider: usize,
    },
    WrongType,
    MissingExpiration,
    /// The token lives longer than the provider's `max_lifetime_seconds` (or does not say
    /// since when: no `iat`).
    LifetimeTooLong,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongAudience,
}

impl VerifyFailure {
    /// A stable snake_case label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            VerifyFailure::TooLarge => "too_large",
            VerifyFailure::Malformed(_) => "malformed",
            VerifyFailure::AlgNone => "alg_none",
            VerifyFailure::UnsupportedAlgorithm => "unsupported_alg",
            VerifyFailure::CriticalHeader => "crit_header",
            VerifyFailure::UnknownIssuer => "unknown_issuer",
            VerifyFailure::KeysUnavailable { .. } => "keys_unavailable",
            VerifyFailure::UnknownKey { .. } => "unknown_kid",
            VerifyFailure::AlgorithmKeyMismatch { .. } => "alg_key_mismatch",
            VerifyFailure::BadSignature { .. } => "bad_signature",
            VerifyFailure::WrongType => "wrong_typ",
            VerifyFailure::MissingExpiration => "missing_exp",
            VerifyFailure::LifetimeTooLong => "lifetime_too_long",
            VerifyFailure::Expired => "expired",
            VerifyFailure::NotYetValid => "not_yet_valid",
            VerifyFailure::IssuedInFuture => "iat_in_future",
            VerifyFailure::WrongAudience => "wrong_audience",
        }
    }

    /// How the token failed the provider's keys, when a refetch might change that (none for
    /// keys not loaded yet: their first load is scheduled anyway).
    pub fn key_miss(&self) -> Option<crate::jwks_refresh::KeyMiss> {
        use crate::jwks_refresh::KeyMiss;
        match self {
            VerifyFailure::UnknownKey { .. } => Some(KeyMiss::UnknownKid),
            VerifyFailure::AlgorithmKeyMismatch { .. } | VerifyFailure::BadSignature { .. } => {
                Some(KeyMiss::Rejected)
            }
            _ => None,
        }
    }

    /// The provider whose keys a fresh fetch might change this outcome for: none loaded yet, an
    /// unknown `kid`, or a signature or key type that no longer matches (keys rotated behind a
    /// known `kid`). Any client can cause these, so the refetches they lead to are rate-limited
    /// ([`crate::jwks_refresh::next_fetch`]).
    pub fn keys_may_have_changed(&self) -> Option<usize> {
        match self {
            VerifyFailure::KeysUnavailable { provider }
            | VerifyFailure::UnknownKey { provider, .. }
            | VerifyFailure::AlgorithmKeyMismatch { provider }
            | VerifyFailure::BadSignature { provider } => Some(*provider),
            _ => None,
        }
    }
}

/// The parts of a compact JWS, decoded but not yet trusted.
struct Parts<'a> {
    signing_input: &'a str,
    signature: &'a str,
    header: Value,
    payload: Vec<u8>,
}

fn is_base64url(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn split(token: &str) -> Result<Parts<'_>, VerifyFailure> {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(VerifyFailure::Malformed("not three segments"));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(VerifyFailure::Malformed("empty segment"));
    }
    if ![header, payload, signature].iter().all(|s| is_base64url(s)) {
        return Err(VerifyFailure::Malformed("segment is not base64url"));
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| VerifyFailure::Malformed("header encoding"))?;
    let header_json: Value = serde_json::from_slice(&header_bytes)
        .map_err(|_| VerifyFailure::Malformed("header is not json"))?;
    if !header_json.is_object() {
        return Err(VerifyFailure::Malformed("header is not an object"));
    }
    let payload_bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| VerifyFailure::Malformed("payload encoding"))?;
    URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| VerifyFailure::Malformed("signature encoding"))?;
    Ok(Parts {
        signing_input: &token[..header.len() + 1 + payload.len()],
        signature,
        header: header_json,
        payload: payload_bytes,
    })
}

fn type_matches(actual: &str, required: &str) -> bool {
    let actual = actual.to_ascii_lowercase();
    let required = required.to_ascii_lowercase();
    actual == required || actual.strip_prefix("application/") == Some(required.as_str())
}

/// Whether a claim must be present, or is checked only when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    WhenPresent,
}

/// What the token is for: `typ` (when the provider requires one; `typ` is the JWS header's, or
/// `Some("")` for a JWS without one, `None` for a token that is not a JWS, such as an opaque
/// one whose claims came from introspection),
/// issuer (when the claims name one), expiry with skew, `nbf`, `iat`, and audience (`audience`
/// says whether a token without `aud` passes). The one implementation of these rules: the
/// verifier applies it after the signature; the ext_authz server applies it to every
/// introspection result.
pub fn check_purpose(
    provider: &Provider,
    claims: &Claims,
    typ: Option<&str>,
    now: i64,
    audience: Presence,
) -> Result<(), VerifyFailure> {
    if let (Some(required), Some(actual)) = (&provider.required_typ, typ) {
        if !type_matches(actual, required) {
            return Err(VerifyFailure::WrongType);
        }
    }
    if provider.refuse_id_tokens && ID_TOKEN_MARKERS.iter().any(|m| claims.raw.contains_key(*m)) {
        return Err(VerifyFailure::WrongType);
    }
    if claims
        .issuer
        .as_deref()
        .is_some_and(|iss| !same_issuer(iss, &provider.issuer))
    {
        return Err(VerifyFailure::UnknownIssuer);
    }
    // A NUL in `sub` could spell a client's key (`principal::client_key`).
    if claims.subject.as_deref().is_some_and(|s| s.contains('\0')) {
        return Err(VerifyFailure::Malformed("sub holds a NUL"));
    }
    let skew = provider.clock_skew_seconds;
    match claims.expires_at {
        None if provider.require_expiration => return Err(VerifyFailure::MissingExpiration),
        Some(exp) if now >= exp.saturating_add(skew) => return Err(VerifyFailure::Expired),
        _ => {}
    }
    if let Some(max) = provider.max_lifetime_seconds {
        // Both ends are needed: without `iat` only the life left could be bounded, and a
        // token revoked today could outlive the bound a revocation is kept for.
        let exp = claims.expires_at.ok_or(VerifyFailure::MissingExpiration)?;
        let iat = claims.issued_at.ok_or(VerifyFailure::LifetimeTooLong)?;
        if exp.saturating_sub(iat) > max {
            return Err(VerifyFailure::LifetimeTooLong);
        }
    }
    if let Some(nbf) = claims.not_before {
        if now.saturating_add(skew) < nbf {
            return Err(VerifyFailure::NotYetValid);
        }
    }
    if let Some(iat) = claims.issued_at {
        if iat > now.saturating_add(skew) {
            return Err(VerifyFailure::IssuedInFuture);
        }
    }
    let audience_ok = if claims.audiences.is_empty() && audience == Presence::WhenPresent {
        true
    } else {
        claims
            .audiences
            .iter()
            .any(|a| provider.audiences.contains(a))
    };
    if !audience_ok {
        return Err(VerifyFailure::WrongAudience);
    }
    Ok(())
}

/// Claims only an ID token carries (OpenID Connect Core §2, §3.3.2.11): `azp` without
/// `client_id` is left out, as Keycloak's access tokens look that way too.
pub const ID_TOKEN_MARKERS: [&str; 4] = ["nonce", "at_hash", "c_hash", "s_hash"];

/// Whether a token's (or a metadata document's) issuer names the configured one: equal, or
/// equal but for one trailing `/` on either side (Ory Hydra and Auth0 put one in `iss`;
/// operators often leave it out). Nothing else is normalised: scheme, host, port and path
/// must be as configured.
pub fn same_issuer(claimed: &str, configured: &str) -> bool {
    claimed == configured
        || claimed.strip_suffix('/').unwrap_or(claimed)
            == configured.strip_suffix('/').unwrap_or(configured)
}

/// The JWS header `typ` of a JWT-shaped token (`Some("")` when the header has none), or `None`
/// when `token` is not a JWS (an opaque token). Unverified: use it only to refuse.
pub fn jws_typ(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    let Value::Object(header) = serde_json::from_slice::<Value>(&bytes).ok()? else {
        return None;
    };
    Some(
        header
            .get("typ")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    )
}

/// The `exp` claim of a JWT-shaped token, unverified (`None` for anything else). Use it only
/// where a wrong value cannot widen anything (e.g. when to forget a revocation of the token).
pub fn jws_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

/// A JWS header's algorithm and `kid`: `none`, an unknown algorithm, `crit` and a `kid` that
/// is not a string are refused.
fn signing_facts(parts: &Parts<'_>) -> Result<(Algorithm, Option<String>), VerifyFailure> {
    let alg_name = parts
        .header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(VerifyFailure::Malformed("header has no alg"))?;
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(VerifyFailure::AlgNone);
    }
    let algorithm = parse_algorithm(alg_name).ok_or(VerifyFailure::UnsupportedAlgorithm)?;
    if parts.header.get("crit").is_some() {
        return Err(VerifyFailure::CriticalHeader);
    }
    let kid = match parts.header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(VerifyFailure::Malformed("kid is not a string")),
    };
    Ok((algorithm, kid))
}

/// The keys of `set` a JWS with `kid` may be signed with: those with that `kid` (none is an
/// unknown key), or every key when the JWS names none.
fn keys_with_kid<'k>(
    set: &'k KeySet,
    kid: Option<&str>,
    provider: usize,
) -> Result<Vec<&'k VerificationKey>, VerifyFailure> {
    match kid {
        Some(kid) => {
            let with_kid: Vec<_> = set
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if with_kid.is_empty() {
                return Err(VerifyFailure::UnknownKey {
                    provider,
                    kid: kid.to_owned(),
                });
            }
            Ok(with_kid)
        }
        None => Ok(set.keys.iter().collect()),
    }
}

/// Whether one of `candidates` that accepts `algorithm` signed the JWS.
fn check_signature(
    parts: &Parts<'_>,
    algorithm: Algorithm,
    candidates: Vec<&VerificationKey>,
    provider: usize,
) -> Result<(), VerifyFailure> {
    let usable: Vec<_> = candidates
        .into_iter()
        .filter(|k| k.accepts(algorithm))
        .collect();
    if usable.is_empty() {
        return Err(VerifyFailure::AlgorithmKeyMismatch { provider });
    }
    let rs_hash = match algorithm {
        Algorithm::RS256 => Some(RsaHash::Sha256),
        Algorithm::RS384 => Some(RsaHash::Sha384),
        Algorithm::RS512 => Some(RsaHash::Sha512),
        _ => None,
    };
    let signed = usable.iter().any(|k| match (&k.rsa, rs_hash) {
        (Some(rsa), Some(hash)) => URL_SAFE_NO_PAD
            .decode(parts.signature)
            .is_ok_and(|sig| rsa.verify_pkcs1(hash, parts.signing_input.as_bytes(), &sig)),
        _ => jsonwebtoken::crypto::verify(
            parts.signature,
            parts.signing_input.as_bytes(),
            &k.key,
            algorithm,
        )
        .unwrap_or(false),
    });
    if signed {
        Ok(())
    } else {
        Err(VerifyFailure::BadSignature { provider })
    }
}

/// A JWS signed with an asymmetric key of `set` (a provider's published keys: HMAC is never
/// accepted here), checked as [`verify`] checks an access token's signature but with no claim
/// checked: its header and payload, for the caller to judge (a Status List Token's `typ`,
/// `iss`, `sub` and lifetime). `max_bytes` bounds its length.
pub fn verify_signed_by(
    jws: &str,
    set: &KeySet,
    max_bytes: usize,
) -> Result<(Value, Vec<u8>), VerifyFailure> {
    if jws.len() > max_bytes {
        return Err(VerifyFailure::TooLarge);
    }
    let parts = split(jws)?;
    let (algorithm, kid) = signing_facts(&parts)?;
    if matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(VerifyFailure::AlgorithmKeyMismatch { provider: 0 });
    }
    let candidates = keys_with_kid(set, kid.as_deref(), 0)?;
    check_signature(&parts, algorithm, candidates, 0)?;
    Ok((parts.header, parts.payload))
}

/// Verifies `token` against the providers. `keys(i)` returns provider `i`'s current key set,
/// or `None` while it has not been loaded. `max_bytes` bounds the token length; `now` is the
/// current Unix time in seconds.
pub fn verify<'k>(
    token: &str,
    providers: &[Provider],
    keys: impl Fn(usize) -> Option<&'k KeySet>,
    max_bytes: usize,
    now: i64,
) -> Result<VerifiedToken, VerifyFailure> {
    if token.len() > max_bytes {
        return Err(VerifyFailure::TooLarge);
    }
    let parts = split(token)?;
    let (algorithm, kid) = signing_facts(&parts)?;
    let mut claims =
        Claims::from_json(&parts.payload).map_err(|e| VerifyFailure::Malformed(e.0))?;
    let issuer = claims
        .issuer
        .as_deref()
        .ok_or(VerifyFailure::UnknownIssuer)?;
    let (provider_index, provider) = providers
        .iter()
        .enumerate()
        .find(|(_, p)| same_issuer(&p.issuer, issuer))
        .ok_or(VerifyFailure::UnknownIssuer)?;

    let candidates: Vec<&VerificationKey> = if matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        provider.hmac_key.iter().collect()
    } else {
        let set = keys(provider_index).ok_or(VerifyFailure::KeysUnavailable {
            provider: provider_index,
        })?;
        keys_with_kid(set, kid.as_deref(), provider_index)?
    };
    check_signature(&parts, algorithm, candidates, provider_index)?;

    let typ = parts
        .header
        .get("typ")
        .and_then(Value::as_str)
        .unwrap_or("");
    check_purpose(provider, &claims, Some(typ), now, Presence::Required)?;
    if let Some(grant) = &provider.client_grant {
        grant.apply(&claims.raw, &mut claims.subject, &mut claims.client_id);
    }
    Ok(VerifiedToken {
        provider: provider_index,
        algorithm,
        kid,
        claims,
        digest: crate::token_hash::token_digest(token),
        signed_digest: crate::token_hash::revocation_digest(token),
    })
}

#[cfg(test)]
mod tests;
