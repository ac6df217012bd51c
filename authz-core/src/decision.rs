//! The decision for one request, and the exact responses for denials.
//!
//! [`decide`] combines the route table, the verifier and the requirements: route → tier →
//! token → signature and claims → requirements → tier rule. Its result is a value the proxy
//! acts on: forward with these headers, answer with this response, or wait for keys.
//!
//! Deny responses are fixed per status: every 401 is byte-identical (same body, same
//! `WWW-Authenticate`) whether the token was missing, expired, forged, for another audience or
//! signed by an unknown key. The reason travels beside the response for logs and metrics only.

use crate::config::Policy;
use crate::keys::KeySet;
use crate::routes::Unmet;
use crate::tier::Tier;
use crate::verify::{verify, VerifiedToken, VerifyFailure};
use std::sync::Arc;

/// Body of every 401.
pub const UNAUTHORIZED_BODY: &str = "{\"error\":\"invalid_token\",\"error_description\":\"the access token is missing or invalid\"}\n";
/// Body of every 403.
pub const FORBIDDEN_BODY: &str = "{\"error\":\"insufficient_scope\",\"error_description\":\"the access token does not grant this request\"}\n";
/// Body of every 400: a request the proxy cannot read (e.g. a path that is not UTF-8).
pub const BAD_REQUEST_BODY: &str =
    "{\"error\":\"invalid_request\",\"error_description\":\"the request cannot be read\"}\n";
/// Body of every 503 from a fail-closed rule.
pub const UNAVAILABLE_BODY: &str = "{\"error\":\"temporarily_unavailable\",\"error_description\":\"authorization cannot be decided right now\"}\n";
/// Seconds in `Retry-After` of a fail-closed 503.
pub const RETRY_AFTER_SECONDS: u32 = 5;
/// Body of every step-up 401 (RFC 9470).
pub const STEP_UP_BODY: &str = "{\"error\":\"insufficient_user_authentication\",\"error_description\":\"a more recent or stronger authentication is required\"}\n";
/// Body of every 429.
pub const RATE_LIMITED_BODY: &str = "{\"error\":\"rate_limited\"}\n";
/// Seconds in `Retry-After` of a 429.
pub const RATE_LIMIT_RETRY_AFTER_SECONDS: u32 = 1;

/// What the proxy knows about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// `:path`, possibly with a query string.
    pub path: &'a str,
    /// The `authorization` header, if any.
    pub authorization: Option<&'a str>,
}

/// Why a request was denied. Never sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    MissingToken,
    /// The `authorization` header is not `Bearer <token>`.
    NotBearer,
    Token(VerifyFailure),
    InsufficientScope,
    ClaimMismatch,
    TenantMismatch,
    /// Keys for the token's issuer could not be loaded in time.
    KeysUnavailable,
    /// The tier needs the authorization server, which this path cannot consult.
    ServerRequired,
    /// The proxy could not supply what a decision needs (e.g. the clock).
    Internal,
    /// The request itself cannot be read: a method or path that is not UTF-8, a target that
    /// is not origin-form, or more than one `authorization` header.
    BadRequest,
    /// The token was revoked at the authorization server (by hash, `jti` or subject).
    Revoked,
    /// The IdP says the token is not active.
    Inactive,
    /// The IdP could not answer, and the tier allows no older answer.
    IdpUnavailable,
    /// The shared revocation state is not confirmed current, and the tier fails closed.
    SharedStateUnconfirmed,
    /// The proxy's revocation set hit its cap and dropped a revocation that may still be
    /// needed: a write on a locally decided tier fails closed until it would have expired.
    RevocationsIncomplete,
    /// The decision ran out of time.
    Deadline,
    /// A rate limit of the tier was exceeded (per address or per subject).
    RateLimited,
    /// The token is valid but its authentication is too old or too weak for the route: the
    /// client must authenticate again (RFC 9470), as `www_authenticate` says.
    StepUp {
        www_authenticate: String,
    },
}

impl From<Unmet> for DenyReason {
    fn from(unmet: Unmet) -> DenyReason {
        match unmet {
            Unmet::Scope => DenyReason::InsufficientScope,
            Unmet::Claim => DenyReason::ClaimMismatch,
            Unmet::Tenant => DenyReason::TenantMismatch,
        }
    }
}

impl DenyReason {
    /// A stable snake_case label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::MissingToken => "missing_token",
            DenyReason::NotBearer => "not_bearer",
            DenyReason::Token(f) => f.as_str(),
            DenyReason::InsufficientScope => "insufficient_scope",
            DenyReason::ClaimMismatch => "claim_mismatch",
            DenyReason::TenantMismatch => "tenant_mismatch",
            DenyReason::KeysUnavailable => "keys_unavailable",
            DenyReason::ServerRequired => "server_required",
            DenyReason::Internal => "internal",
            DenyReason::BadRequest => "bad_request",
            DenyReason::Revoked => "revoked",
            DenyReason::Inactive => "inactive",
            DenyReason::IdpUnavailable => "idp_unavailable",
            DenyReason::SharedStateUnconfirmed => "shared_state_unconfirmed",
            DenyReason::RevocationsIncomplete => "revocations_incomplete",
            DenyReason::Deadline => "deadline",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::StepUp { .. } => "step_up_required",
        }
    }

    /// The HTTP status for this reason: 401 for anything about the token (and a step-up), 403
    /// for a valid token that is not enough, 429 over a rate limit, 503 where the answer cannot
    /// be decided (fail closed), 400 for a request that cannot be read.
    pub fn status(&self) -> u16 {
        match self {
            DenyReason::BadRequest => 400,
            DenyReason::MissingToken
            | DenyReason::NotBearer
            | DenyReason::Token(_)
            | DenyReason::Revoked
            | DenyReason::Inactive
            | DenyReason::StepUp { .. } => 401,
            DenyReason::InsufficientScope
            | DenyReason::ClaimMismatch
            | DenyReason::TenantMismatch => 403,
            DenyReason::RateLimited => 429,
            DenyReason::KeysUnavailable
            | DenyReason::ServerRequired
            | DenyReason::Internal
            | DenyReason::IdpUnavailable
            | DenyReason::SharedStateUnconfirmed
            | DenyReason::RevocationsIncomplete
            | DenyReason::Deadline => 503,
        }
    }
}

/// A complete deny response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: &'static str,
}

/// Builds the response for a reason: the one table every host answers from. Only the status
/// class selects the response, except a step-up, whose challenge says what to do next.
pub fn deny_response(reason: &DenyReason, realm: &str) -> DenyResponse {
    let json = ("content-type", "application/json".to_owned());
    let no_store = ("cache-control", "no-store".to_owned());
    if let DenyReason::StepUp { www_authenticate } = reason {
        return DenyResponse {
            status: 401,
            headers: vec![
                ("www-authenticate", www_authenticate.clone()),
                json,
                no_store,
            ],
            body: STEP_UP_BODY,
        };
    }
    match reason.status() {
        401 => DenyResponse {
            status: 401,
            headers: vec![
                (
                    "www-authenticate",
                    format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
                ),
                json,
                no_store,
            ],
            body: UNAUTHORIZED_BODY,
        },
        403 => DenyResponse {
            status: 403,
            headers: vec![
                (
                    "www-authenticate",
                    format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\""),
                ),
                json,
                no_store,
            ],
            body: FORBIDDEN_BODY,
        },
        400 => DenyResponse {
            status: 400,
            headers: vec![json, no_store],
            body: BAD_REQUEST_BODY,
        },
        429 => DenyResponse {
            status: 429,
            headers: vec![
                ("retry-after", RATE_LIMIT_RETRY_AFTER_SECONDS.to_string()),
                json,
                no_store,
            ],
            body: RATE_LIMITED_BODY,
        },
        _ => DenyResponse {
            status: 503,
            headers: vec![
                ("retry-after", RETRY_AFTER_SECONDS.to_string()),
                json,
                no_store,
            ],
            body: UNAVAILABLE_BODY,
        },
    }
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Forward, after setting these headers (the configured names were stripped first).
    Allow {
        route: String,
        tier: Tier,
        upstream_headers: Vec<(String, String)>,
        subject: Option<String>,
        /// The verified token (none on routes that need no token).
        token: Option<Arc<VerifiedToken>>,
    },
    /// Answer with [`deny_response`] for `reason`.
    Deny {
        route: String,
        tier: Tier,
        reason: DenyReason,
    },
    /// The token failed in a way fresh keys might change ([`VerifyFailure::keys_may_have_changed`]:
    /// no keys yet, an unknown `kid`, or a signature that no known key verifies, as after a
    /// rotation behind a reused `kid`). The proxy may fetch the provider's keys and decide again,
    /// or deny for `failure`.
    AwaitKeys {
        route: String,
        tier: Tier,
        provider: usize,
        failure: VerifyFailure,
    },
}

impl Decision {
    /// The outcome label for metrics: `allow`, `deny` or `await_keys`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::AwaitKeys { .. } => "await_keys",
        }
    }
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive). The token must have
/// RFC 6750's `b64token` syntax (`[A-Za-z0-9-._~+/]+=*`, which covers JWTs and every opaque
/// token format in use): anything else is refused here, before it can cost a verification or
/// an introspection.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body
            .bytes()
            .all(|b| B64TOKEN.get(usize::from(b)).copied().unwrap_or(false));
    b64token.then_some(token)
}

/// The bytes of RFC 6750's `b64token` (before its trailing `=`): letters, digits, `-._~+/`.
/// A table, as every request's credential is scanned byte by byte.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        #[allow(clippy::indexing_slicing)] // b < 256 = the table's length
        let slot = &mut table[b];
        *slot = c.is_ascii_alphanumeric()
            || c == b'-'
            || c == b'.'
            || c == b'_'
            || c == b'~'
            || c == b'+'
            || c == b'/';
        b += 1;
    }
    table
};

fn allow_headers(
    policy: &Policy,
    tier: Tier,
    token: Option<&VerifiedToken>,
) -> Vec<(String, String)> {
    let names = &policy.headers;
    let mut headers = vec![(names.tier.clone(), tier.as_str().to_owned())];
    if let Some(token) = token {
        let claims = &token.claims;
        if let Some(principal) = claims.principal() {
            headers.push((names.subject.clone(), principal.id.to_owned()));
            headers.push((
                names.subject_kind.clone(),
                principal.kind.as_str().to_owned(),
            ));
        }
        if let Some(provider) = policy.providers.get(token.provider) {
            headers.push((names.issuer.clone(), provider.issuer.clone()));
        }
        headers.push((names.scopes.clone(), claims.scopes.join(" ")));
        for (claim, header) in &names.claims {
            if let Some(value) = claims.claim_as_header_value(claim) {
                headers.push((header.clone(), value));
            }
        }
    }
    headers.retain(|(_, v)| v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)));
    headers
}

/// Decides one request. `keys(i)` gives provider `i`'s current keys; `now` is Unix seconds.
pub fn decide<'k>(
    policy: &Policy,
    request: &RequestFacts<'_>,
    keys: impl Fn(usize) -> Option<&'k KeySet>,
    now: i64,
) -> Decision {
    decide_with(
        policy,
        request,
        |token| verify(token, &policy.providers, keys, policy.max_token_bytes, now).map(Arc::new),
        |_, _| None,
    )
}

/// [`decide`] with the token check supplied by the caller (e.g. from a cache of earlier
/// verifications). `check_token` is called at most once, only when a token is needed.
/// `screen` sees a verified token that meets its route's requirements on a locally decided
/// tier, last before the allow: a reason it returns denies (revocations held by the proxy).
pub fn decide_with(
    policy: &Policy,
    request: &RequestFacts<'_>,
    check_token: impl FnOnce(&str) -> Result<Arc<VerifiedToken>, VerifyFailure>,
    screen: impl FnOnce(&VerifiedToken, Tier) -> Option<DenyReason>,
) -> Decision {
    let path = crate::routes::match_path(request.path);
    let route = policy.routes.find_matched(request.method, &path);
    let (name, tier) = (route.name.clone(), route.tier);
    let deny = |reason| Decision::Deny {
        route: name.clone(),
        tier,
        reason,
    };
    if !tier.requires_token() {
        return Decision::Allow {
            route: name.clone(),
            tier,
            upstream_headers: allow_headers(policy, tier, None),
            subject: None,
            token: None,
        };
    }
    let Some(authorization) = request.authorization else {
        return deny(DenyReason::MissingToken);
    };
    let Some(token) = bearer_token(authorization) else {
        return deny(DenyReason::NotBearer);
    };
    let verified = match check_token(token) {
        Ok(v) => v,
        Err(failure) => {
            return match failure.keys_may_have_changed() {
                Some(provider) => Decision::AwaitKeys {
                    route: name.clone(),
                    tier,
                    provider,
                    failure,
                },
                None => deny(DenyReason::Token(failure)),
            }
        }
    };
    if let Err(unmet) = route.require.check(&verified.claims, &path) {
        return deny(unmet.into());
    }
    if tier.requires_server() {
        return deny(DenyReason::ServerRequired);
    }
    if let Some(reason) = screen(&verified, tier) {
        return deny(reason);
    }
    Decision::Allow {
        route: name.clone(),
        tier,
        upstream_headers: allow_headers(policy, tier, Some(&verified)),
        subject: verified.claims.principal().map(|p| p.key()),
        token: Some(verified),
    }
}

#[cfg(test)]
mod tests;
