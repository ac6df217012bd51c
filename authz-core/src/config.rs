//! The plugin configuration: its JSON schema ([`FilterConfig`]) and its validation into a
//! ready-to-use [`Policy`]. Validation reports every problem it finds at once, each naming
//! where it is (`providers[0].issuer: ...`), so an operator fixes a config in one pass.
//!
//! Unknown fields are problems too (a typo such as `audience` for `audiences` must not
//! silently disable a check). This module does not fetch keys: remote JWKS sources are
//! described here and fetched by the filter.

use crate::discovery;
use crate::error::Error;
use crate::keys::{KeySet, VerificationKey};
use crate::routes::{ClaimRule, PathMatch, Requirements, Route, RouteTable, TenantRule};
use crate::tier::Tier;
use crate::verify::Provider;
use crate::verify::{TOKEN_BYTES_RANGE, TOKEN_BYTES_RANGE_TEXT};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Every default of the filter configuration, named once: the validator applies these, and
/// the generated reference (`docs/config-reference.md`) prints them from the schema.
pub mod defaults {
    pub const REALM: &str = "api";
    pub const KEY_WAIT_TIMEOUT_MS: u64 = 3_000;
    pub const MAX_TOKEN_BYTES: usize = crate::verify::DEFAULT_MAX_TOKEN_BYTES;
    pub const FORWARD_TOKEN: bool = false;
    pub const SERVER_TIMEOUT_MS: u64 = 1_000;
    pub const POLL_INTERVAL_MS: u64 = 250;
    pub const MAX_UNREACHABLE_MS: u64 = 5_000;
    /// Longest the server holds a change-feed request open (push); never more than half of
    /// `max_unreachable_ms`, so held requests still renew cache trust in time.
    pub const PUSH_WAIT_MS: u64 = 20_000;
    pub const LOCAL_REVOCATION_TIERS: [&str; 2] = ["authenticated", "standard_write"];
    pub const MAX_REVOCATIONS: usize = crate::revocations::DEFAULT_MAX_ENTRIES;
    pub const MAX_SUBJECT_REVOCATIONS: usize = crate::revocations::DEFAULT_MAX_SUBJECTS;
    pub const CACHE_MAX_ENTRIES: usize = 10_000;
    pub const DENY_TTL_MS: u64 = crate::decision_cache::DEFAULT_DENY_MS;
    pub const JWT_TTL_MS: u64 = 60_000;
    pub const CLOCK_SKEW_SECONDS: u64 = 60;
    pub const REQUIRE_EXPIRATION: bool = true;
    pub const REFRESH_INTERVAL_SECONDS: u64 = 300;
    pub const JWKS_TIMEOUT_MS: u64 = 2_000;
    pub const MIN_REFETCH_INTERVAL_SECONDS: u64 = 30;
    pub const IGNORE_CASE: bool = true;
    pub const SUBJECT_HEADER: &str = "x-auth-subject";
    pub const SCOPES_HEADER: &str = "x-auth-scopes";
    pub const TIER_HEADER: &str = "x-auth-tier";
    pub const ISSUER_HEADER: &str = "x-auth-issuer";
    pub const SUBJECT_KIND_HEADER: &str = "x-auth-subject-kind";
}

/// The configuration as written (JSON), before validation.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FilterConfig {
    /// Trusted token issuers (at least one; each issuer once).
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Route rules, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Required: the rule for requests no route matches (an explicit choice, never implied).
    pub default: Option<RouteTargetConfig>,
    /// `realm` in `WWW-Authenticate`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::REALM)))]
    pub realm: Option<String>,
    /// Names of the context headers set on allowed requests.
    pub headers: Option<HeadersConfig>,
    /// How long a request may wait for keys that are being fetched.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::KEY_WAIT_TIMEOUT_MS)))]
    pub key_wait_timeout_ms: Option<u64>,
    /// Longest accepted token, in bytes, 256–65536.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::MAX_TOKEN_BYTES)))]
    pub max_token_bytes: Option<usize>,
    /// Keep the `authorization` header on allowed requests. By default the upstream gets the
    /// verified context headers, not the credential (as Envoy `jwt_authn` `forward: false`).
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::FORWARD_TOKEN)))]
    pub forward_token: Option<bool>,
    /// Allowed requests logged (an info line each, like every denial), per million, spread
    /// evenly (0: allows are debug lines only).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 0)))]
    pub log_allows_per_million: Option<u32>,
    /// The companion ext_authz server, for tiers that need it. Without it those tiers fail
    /// closed in the filter.
    pub server: Option<ServerLinkConfig>,
    /// The in-proxy caches.
    pub cache: Option<CacheConfig>,
    /// Requests upstreams may read differently than the route table does (method-override
    /// headers, encoded reserved characters in the path): refused by default.
    pub requests: Option<crate::target::RequestRules>,
    /// A signed verification context on allowed requests (see README, "Signed verification
    /// context"); its signing keys come from the server with the change feed.
    pub context: Option<crate::context::ContextConfig>,
    /// Token Status Lists (see README, "Revocation published by the IdP"): the lists tokens
    /// may name. The server fetches them and its change feed brings the entries found set;
    /// routes the filter decides refuse those tokens on the tiers of
    /// `server.local_revocations`, and a token naming another list.
    pub status_lists: Option<crate::status_list::StatusListsConfig>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// How the filter reaches the ext_authz server.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ServerLinkConfig {
    /// Required: gRPC cluster of the server's Check service.
    pub cluster: Option<String>,
    /// Deadline of one Check call, 1–30000; past it the request fails closed.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::SERVER_TIMEOUT_MS)))]
    pub timeout_ms: Option<u64>,
    /// HTTP cluster of the server's admin port, for `/admin/epochs` polls (with
    /// `epochs_token`; without both there is no polling).
    pub epochs_cluster: Option<String>,
    /// Default: the epochs cluster name.
    pub epochs_authority: Option<String>,
    /// Bearer secret for `/admin/epochs` (the server's `epochs_token`).
    pub epochs_token: Option<String>,
    /// Epochs poll period; 0 turns polling off (then only Check replies carry versions).
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::POLL_INTERVAL_MS)))]
    pub poll_interval_ms: Option<u64>,
    /// Without a successful poll for this long, cached decisions of tiers above
    /// `authenticated` are not used.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::MAX_UNREACHABLE_MS)))]
    pub max_unreachable_ms: Option<u64>,
    /// Push: how long the server may hold a change-feed request open until something changes
    /// (a long poll; an answer comes as soon as anything changes). 0 turns push off (plain
    /// polling every `poll_interval_ms`). Default: 20000, or half of `max_unreachable_ms` when
    /// that is less. When a held request fails, the filter polls every `poll_interval_ms`
    /// until one succeeds.
    pub push_wait_ms: Option<u64>,
    /// Locally decided tiers whose routes refuse tokens the server revoked (by hash, `jti` or
    /// subject), from the change feed: any of `authenticated`, `standard_write`; `[]` turns
    /// it off. Server tiers always honour revocations (the server decides them).
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::LOCAL_REVOCATION_TIERS)))]
    pub local_revocations: Option<Vec<String>>,
    /// Cap on revocations each worker holds, 1–10000000. At the cap, `standard_write` routes
    /// that honour revocations fail closed (503) until the dropped revocation's token expires.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::MAX_REVOCATIONS)))]
    pub max_revocations: Option<usize>,
    /// Cap on subject revocations (`revoke-subject`) each worker holds, 1–10000000, apart
    /// from `max_revocations`. A subject revocation is forgotten once every token it refuses
    /// has expired (the server's `token.max_lifetime_seconds` after it); at the cap, writes
    /// fail closed (503) until the dropped one would have been forgotten.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::MAX_SUBJECT_REVOCATIONS)))]
    pub max_subject_revocations: Option<usize>,
    /// For providers that issue opaque access tokens (not JWTs): on `authenticated` and
    /// `standard_write` routes such a token is decided by the server (introspection, its
    /// revocations) through the decision cache, instead of being refused as malformed.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub opaque_tokens: Option<bool>,
    /// This proxy's `region/zone`, sent with the filter's Check calls for the server's
    /// decision log (`client_locality`). The Wasm filter reads Envoy's `node.locality` when
    /// this is unset; the native module cannot (its ABI exposes no node), so set it there.
    pub client_locality: Option<String>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// Cache sizes and lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CacheConfig {
    /// Entry cap of each worker's decision cache and of its token cache, 1–10000000.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::CACHE_MAX_ENTRIES)))]
    pub max_entries: Option<usize>,
    /// tier → longest reuse of a server decision in ms (0 = never). Defaults: authenticated
    /// 60000, standard_write 30000, privileged 5000, regulated 1000.
    #[serde(default)]
    pub tier_max_ms: BTreeMap<String, u64>,
    /// Longest reuse of a denial.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::DENY_TTL_MS)))]
    pub deny_ttl_ms: Option<u64>,
    /// Longest reuse of a verified JWT (never past its `exp`); 0 disables.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::JWT_TTL_MS)))]
    pub jwt_ttl_ms: Option<u64>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// A validated server link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLink {
    pub cluster: String,
    pub timeout_ms: u64,
    pub epochs: Option<EpochsPoll>,
    pub max_unreachable_ms: u64,
    /// Locally decided tiers that honour revocations (empty without an epochs feed).
    pub local_revocations: Vec<Tier>,
    pub max_revocations: usize,
    pub max_subject_revocations: usize,
    /// Bearer tokens that are not JWTs go to the server on locally decided tiers too.
    pub opaque_tokens: bool,
    /// This proxy's `region/zone`, when configured.
    pub client_locality: Option<String>,
}

/// A validated epochs poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochsPoll {
    pub cluster: String,
    pub authority: String,
    pub token: String,
    pub interval_ms: u64,
    /// How long the server may hold a request open (0: plain polling).
    pub push_wait_ms: u64,
}

/// Validated cache settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_entries: usize,
    pub caps: crate::decision_cache::TierCaps,
    pub jwt_ttl_ms: u64,
}

/// One trusted issuer.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProviderConfig {
    /// Required: a name for logs and metrics.
    pub name: Option<String>,
    /// Required: the exact `iss` its tokens carry.
    pub issuer: Option<String>,
    /// Required, at least one: the token's `aud` (string or list) must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Required (unless only `hmac_secret_base64`): where the verification keys come from.
    pub jwks: Option<JwksConfig>,
    /// Base64 HMAC secret (>= 32 bytes): the only way HS256/384/512 tokens are accepted.
    pub hmac_secret_base64: Option<String>,
    /// Tolerance for `exp`, `nbf` and `iat`, at most 600.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::CLOCK_SKEW_SECONDS)))]
    pub clock_skew_seconds: Option<u64>,
    /// Refuse tokens without `exp`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::REQUIRE_EXPIRATION)))]
    pub require_expiration: Option<bool>,
    /// Required header `typ`, e.g. `at+jwt` (RFC 9068; an `application/` prefix is accepted).
    pub typ: Option<String>,
    /// Refuse tokens with an ID token's markers (`nonce`, `at_hash`, `c_hash`, `s_hash`): for
    /// IdPs whose access tokens say `typ: JWT` like their ID tokens (Ory Hydra), where `typ`
    /// cannot tell them apart.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub refuse_id_tokens: Option<bool>,
    /// Longest accepted token lifetime (`exp` − `iat`), seconds, 60–31536000: longer-lived
    /// tokens, and tokens without `exp`, are refused (as `jwt_authn`'s `max_lifetime`). Give
    /// the server the same value (`token.max_lifetime_seconds`): it bounds how long a
    /// revocation must be kept. Default: no limit.
    pub max_lifetime_seconds: Option<u64>,
    /// A claim whose value marks client-credentials tokens that carry a `sub` (`{claim: gty,
    /// values: [client-credentials]}` for Auth0): such a token's principal is the client,
    /// as for tokens without `sub`. Without it, only a missing `sub` makes a client token.
    pub client_grant: Option<crate::principal::ClientGrant>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// Where a provider's keys come from: exactly one of `inline` or `remote`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JwksConfig {
    /// A JWKS document, inline.
    pub inline: Option<Value>,
    /// A JWKS fetched through an Envoy cluster, refreshed on a timer and on unknown `kid`s.
    pub remote: Option<RemoteJwksConfig>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// A JWKS fetched over HTTP through an Envoy cluster.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RemoteJwksConfig {
    /// Required: the Envoy cluster of the JWKS host (with `discovery`: of the issuer's host).
    pub cluster: Option<String>,
    /// The JWKS path, starting with `/`. Required unless `discovery`.
    pub path: Option<String>,
    /// Find the keys from the issuer alone: fetch its OpenID metadata
    /// (`<issuer>/.well-known/openid-configuration`, whose `issuer` must match) through
    /// `cluster`, then its `jwks_uri`, which must be on the same host. Refreshed with the keys.
    #[serde(default)]
    pub discovery: bool,
    /// `:authority` of the fetch. Default: the issuer's host with `discovery`, else the
    /// cluster name.
    pub authority: Option<String>,
    /// Scheduled refresh period, at least 1; failures back off, last good keys stay.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::REFRESH_INTERVAL_SECONDS)))]
    pub refresh_interval_seconds: Option<u64>,
    /// Fetch deadline, 1–60000.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::JWKS_TIMEOUT_MS)))]
    pub timeout_ms: Option<u64>,
    /// Minimum time between fetches caused by unknown `kid`s.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::MIN_REFETCH_INTERVAL_SECONDS)))]
    pub min_refetch_interval_seconds: Option<u64>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// One route rule as written.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RouteConfig {
    /// Required: the route's name in logs, metrics and cache keys.
    pub name: Option<String>,
    /// Required: which requests the rule covers.
    #[serde(rename = "match")]
    pub matcher: Option<MatchConfig>,
    /// Required: `public`, `authenticated`, `standard_write`, `privileged` or `regulated`.
    pub tier: Option<String>,
    /// What an allowed token must carry.
    pub require: Option<RequireConfig>,
    /// Fresh when asked: on an `authenticated` or `standard_write` route, the filter sends the
    /// route's requests to the server (which decides with its revocations and the IdP, as for
    /// server tiers) and reuses a decision at most this long, 0–60000 ms (0: never). Needs
    /// `server`. Unset: decided locally from the JWT.
    pub fresh_cache_ms: Option<u64>,
    /// Checked in the background: on an `authenticated` route of reads only (`methods` of
    /// `GET`, `HEAD`, `OPTIONS`), a request is answered from the local JWT verification at once
    /// and the server checks the token behind it (introspection, revocations, the policy), at
    /// most once per token in this many ms, 1000–3600000. A token the server refuses is revoked
    /// through the change feed. Needs `server` with the feed, honouring revocations on
    /// `authenticated` routes.
    pub background_check_ms: Option<u64>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// The default route: a tier and requirements, no match.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RouteTargetConfig {
    /// Required: `public`, `authenticated`, `standard_write`, `privileged` or `regulated`.
    pub tier: Option<String>,
    /// What an allowed token must carry.
    pub require: Option<RequireConfig>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// Exactly one of `exact`, `prefix`, `regex`; optional `methods`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MatchConfig {
    /// The whole path (query excluded), starting with `/`.
    pub exact: Option<String>,
    /// A path prefix, starting with `/`.
    pub prefix: Option<String>,
    /// A regular expression the whole path must match (anchored; `regex` crate syntax).
    pub regex: Option<String>,
    /// HTTP methods the rule covers (compared upper-case). Default: all.
    pub methods: Option<Vec<String>>,
    /// Compare the path without ASCII case (the default: an upstream that treats `/ADMIN` as
    /// `/admin` must not see it under a weaker tier; where the upstream is case-sensitive the
    /// other spellings are other, usually absent, resources, so matching them costs nothing).
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::IGNORE_CASE)))]
    pub ignore_case: Option<bool>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// Requirements of a route (none on `public` routes).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RequireConfig {
    /// Every one of these scopes (`scope` / `scp`) must be granted; else 403.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claim rules, all must hold; else 403.
    #[serde(default)]
    pub claims: Vec<ClaimRuleConfig>,
    /// The token's tenant claim must equal a path segment; else 403.
    pub tenant: Option<TenantConfig>,
    /// The IdP's word, now: the ext_authz server introspects even a JWT access token it could
    /// verify itself (so a token revoked at the IdP is refused within the tier's window).
    /// Only on server-decided tiers (`privileged`, `regulated`).
    #[serde(default)]
    pub introspect: bool,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// `{"claim": "roles", "contains": "admin"}` or `{"claim": "level", "equals": 3}`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClaimRuleConfig {
    /// Required: the claim's name.
    pub claim: Option<String>,
    /// The claim equals this JSON value (exactly one of `equals`, `contains`).
    pub equals: Option<Value>,
    /// The claim (a list, or a space-separated string) contains this value.
    pub contains: Option<String>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// Tenant isolation: `claim` must equal the path's `path_segment`-th segment.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TenantConfig {
    /// Required: the claim naming the token's tenant.
    pub claim: Option<String>,
    /// Required: 1-based path segment holding the tenant (`/tenants/{t}/…` → 2).
    pub path_segment: Option<usize>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// Names of the headers the filter sets for the upstream (and strips from clients first).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HeadersConfig {
    /// The token's principal: its `sub`, or its `client_id` when it has no `sub`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::SUBJECT_HEADER)))]
    pub subject: Option<String>,
    /// Where the subject header's value came from: `sub` or `client_id`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::SUBJECT_KIND_HEADER)))]
    pub subject_kind: Option<String>,
    /// Granted scopes, space-separated.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::SCOPES_HEADER)))]
    pub scopes: Option<String>,
    /// The route's tier.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::TIER_HEADER)))]
    pub tier: Option<String>,
    /// The token's `iss`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::ISSUER_HEADER)))]
    pub issuer: Option<String>,
    /// claim name → header name.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// How a provider's keys are obtained, validated.
#[derive(Debug, Clone)]
pub enum JwksSource {
    Inline(KeySet),
    Remote(RemoteJwks),
}

/// A validated remote JWKS source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    /// The JWKS path; empty with discovery until the metadata names it.
    pub path: String,
    /// With discovery: the metadata document's path on the issuer's host.
    pub discovery_path: Option<String>,
    pub authority: String,
    pub refresh_interval_seconds: u64,
    pub timeout_ms: u64,
    pub min_refetch_interval_seconds: u64,
}

/// Upstream header names, validated and lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    pub subject: String,
    pub subject_kind: String,
    pub scopes: String,
    pub tier: String,
    pub issuer: String,
    /// (claim, header) pairs.
    pub claims: Vec<(String, String)>,
}

/// Why `secret` must not be used as one: shorter than 16 characters, or a placeholder left
/// from an example (`change-me`, `replace-me`, `placeholder`, `example`, `xxxx`, `<…>`).
/// Shared by the filter's and the server's configuration checks.
pub fn weak_secret(secret: &str) -> Option<&'static str> {
    let lower = secret.to_ascii_lowercase();
    let placeholders = [
        "change-me",
        "changeme",
        "change_me",
        "replace-me",
        "replaceme",
        "replace-with",
        "placeholder",
        "example",
        "xxxx",
        "<",
    ];
    if secret.len() < 16 {
        Some("must be at least 16 characters")
    } else if placeholders.iter().any(|p| lower.contains(p)) {
        Some("is a placeholder from an example: set a real secret")
    } else {
        None
    }
}

/// The header the ext_authz server sets with the policy version it decided under.
pub const POLICY_VERSION_HEADER: &str = "x-authz-policy-version";

/// The context headers' default names (`headers.*`), plus [`POLICY_VERSION_HEADER`]: what the
/// filter and the server set unless configured otherwise, and strip from every client request.
pub const STANDARD_CONTEXT_HEADERS: [&str; 7] = [
    defaults::SUBJECT_HEADER,
    defaults::SUBJECT_KIND_HEADER,
    defaults::SCOPES_HEADER,
    defaults::TIER_HEADER,
    defaults::ISSUER_HEADER,
    POLICY_VERSION_HEADER,
    authz_context::DEFAULT_HEADER,
];

impl HeaderNames {
    /// Every header the system may set on a request this filter passes: the configured names,
    /// and the standard names too (the server sets those, and a deployment that renamed one
    /// must not let a client's copy of the standard name through). All of them are removed
    /// from client requests first, on every route, by the filter and by the server.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.configured().chain(
            STANDARD_CONTEXT_HEADERS
                .into_iter()
                .filter(move |name| !self.configured().any(|h| h == *name)),
        )
    }

    /// The names this configuration sets (context headers and claim mappings).
    pub fn configured(&self) -> impl Iterator<Item = &str> {
        [
            &self.subject,
            &self.subject_kind,
            &self.scopes,
            &self.tier,
            &self.issuer,
        ]
        .into_iter()
        .map(String::as_str)
        .chain(self.claims.iter().map(|(_, h)| h.as_str()))
    }
}

/// A validated configuration, ready for [`crate::decide`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub providers: Vec<Provider>,
    /// Parallel to `providers`.
    pub jwks_sources: Vec<JwksSource>,
    pub routes: RouteTable,
    pub realm: String,
    pub headers: HeaderNames,
    pub key_wait_timeout_ms: u64,
    pub max_token_bytes: usize,
    pub forward_token: bool,
    /// Allowed requests logged at info, per million.
    pub log_allows_per_million: u32,
    pub server: Option<ServerLink>,
    pub cache: CacheSettings,
    pub requests: crate::target::RequestRules,
    pub context: Option<crate::context::ContextSettings>,
    /// The Status Lists tokens may name (`status_lists.uris`); empty: not configured.
    pub status_lists: Vec<String>,
}

/// Problems found so far, each "where: what" (every one is reported at once).
pub(crate) struct Problems(pub(crate) Vec<String>);

impl Problems {
    pub(crate) fn add(&mut self, at: &str, what: impl std::fmt::Display) {
        self.0.push(format!("{at}: {what}"));
    }

    pub(crate) fn unknown(&mut self, at: &str, fields: &Map<String, Value>) {
        for name in fields.keys() {
            self.add(at, format_args!("unknown field \"{name}\""));
        }
    }

    pub(crate) fn required<'a, T>(
        &mut self,
        at: &str,
        field: &str,
        value: &'a Option<T>,
    ) -> Option<&'a T> {
        if value.is_none() {
            self.add(at, format_args!("\"{field}\" is required"));
        }
        value.as_ref()
    }
}

const RESERVED_HEADERS: [&str; 6] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
];

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !RESERVED_HEADERS.contains(&name)
}

/// `status_lists:`: the lists tokens may name, and a change feed to bring the entries the
/// server finds set (the filter reads no list itself).
fn parse_status_lists(
    p: &mut Problems,
    c: &FilterConfig,
    server: Option<&ServerLink>,
) -> Vec<String> {
    let Some(config) = c.status_lists.as_ref() else {
        return Vec::new();
    };
    if server.is_none_or(|s| s.epochs.is_none()) {
        p.add(
            "status_lists",
            "needs \"server\" with the change feed (epochs_cluster): the server reads the lists and the feed brings what they revoke",
        );
    }
    config.settings("status_lists", |_| true, &mut p.0).uris
}

/// `context:`: its settings, a header name no other header of ours uses, and a change feed to
/// bring the signing keys.
fn parse_context(
    p: &mut Problems,
    c: &FilterConfig,
    headers: &HeaderNames,
    server: Option<&ServerLink>,
) -> Option<crate::context::ContextSettings> {
    let config = c.context.as_ref()?;
    if config.signing_seed_file.is_some()
        || config.signing_seed.is_some()
        || config.rotate_every_seconds.is_some()
    {
        p.add(
            "context",
            "signing_seed(_file) and rotate_every_seconds are the server's: the filter's keys come from the change feed",
        );
    }
    // Besides the reserved and standard names: every header this filter sets.
    let taken: Vec<&str> = context_header_taken()
        .into_iter()
        .chain(headers.configured())
        .collect();
    let settings = config.settings("context", &taken, &mut p.0)?;
    if server.is_none_or(|s| s.epochs.is_none()) {
        p.add(
            "context",
            "needs the change feed (server.epochs_cluster): the signing keys come with it",
        );
    }
    Some(settings)
}

/// Names a signed context's header may not take: the reserved ones, and the standard headers
/// the filter and the server set (its own default name aside). Shared by both components'
/// configuration checks.
pub fn context_header_taken() -> Vec<&'static str> {
    RESERVED_HEADERS
        .into_iter()
        .chain(STANDARD_CONTEXT_HEADERS)
        .filter(|name| *name != authz_context::DEFAULT_HEADER)
        .collect()
}

/// `background_check_ms` only where a late refusal is acceptable: reads of `authenticated`
/// routes (never writes, privileged or regulated ones), decided locally.
fn check_background_route(
    p: &mut Problems,
    at: &str,
    tier: Tier,
    methods: &[String],
    ms: u64,
    fresh: bool,
) {
    let key = format!("{at}.background_check_ms");
    if tier != Tier::Authenticated {
        p.add(
            &key,
            format_args!(
                "only authenticated reads may be checked after the answer; {tier} may not"
            ),
        );
    }
    let reads = ["GET", "HEAD", "OPTIONS"];
    if methods.is_empty() || methods.iter().any(|m| !reads.contains(&m.as_str())) {
        p.add(
            &key,
            "the route's match.methods must be reads only (GET, HEAD, OPTIONS): a write is never answered before it is checked",
        );
    }
    if fresh {
        p.add(
            &key,
            "the route asks the server first (fresh_cache_ms): nothing is left to check after the answer",
        );
    }
    if !(1_000..=3_600_000).contains(&ms) {
        p.add(&key, "must be between 1000 and 3600000");
    }
}

pub(crate) fn parse_tier(p: &mut Problems, at: &str, tier: &Option<String>) -> Tier {
    match tier.as_deref() {
        None => {
            p.add(at, "\"tier\" is required");
            Tier::Regulated
        }
        Some(name) => name.parse().unwrap_or_else(|unknown| {
            p.add(at, unknown);
            Tier::Regulated
        }),
    }
}

pub(crate) fn parse_requirements(
    p: &mut Problems,
    at: &str,
    tier: Tier,
    require: &Option<RequireConfig>,
) -> Requirements {
    let Some(r) = require else {
        return Requirements::default();
    };
    p.unknown(at, &r.unknown);
    if tier == Tier::Public && (!r.scopes.is_empty() || !r.claims.is_empty() || r.tenant.is_some())
    {
        p.add(
            at,
            "a public route cannot have requirements (it carries no token)",
        );
    }
    if r.introspect && !tier.requires_server() {
        p.add(
            &format!("{at}.introspect"),
            "needs a server-decided tier (privileged or regulated)",
        );
    }
    let mut out = Requirements {
        scopes: r.scopes.clone(),
        introspect: r.introspect,
        ..Requirements::default()
    };
    for (i, scope) in r.scopes.iter().enumerate() {
        if scope.is_empty() || scope.contains(' ') {
            p.add(
                &format!("{at}.scopes[{i}]"),
                "a scope is one non-empty word",
            );
        }
    }
    for (i, rule) in r.claims.iter().enumerate() {
        let at = format!("{at}.claims[{i}]");
        p.unknown(&at, &rule.unknown);
        let Some(claim) = p.required(&at, "claim", &rule.claim) else {
            continue;
        };
        match (&rule.equals, &rule.contains) {
            (Some(value), None) => out.claims.push(ClaimRule::Equals {
                claim: claim.clone(),
                value: value.clone(),
            }),
            (None, Some(value)) => out.claims.push(ClaimRule::Contains {
                claim: claim.clone(),
                value: value.clone(),
            }),
            _ => p.add(&at, "exactly one of \"equals\" or \"contains\" is required"),
        }
    }
    if let Some(t) = &r.tenant {
        let at = format!("{at}.tenant");
        p.unknown(&at, &t.unknown);
        let claim = p.required(&at, "claim", &t.claim);
        let segment = p.required(&at, "path_segment", &t.path_segment);
        if segment == Some(&0) {
            p.add(&at, "path_segment is 1-based");
        }
        if let (Some(claim), Some(&segment)) = (claim, segment) {
            if segment > 0 {
                out.tenant = Some(TenantRule {
                    claim: claim.clone(),
                    path_segment: segment,
                });
            }
        }
    }
    out
}

fn parse_match(p: &mut Problems, at: &str, m: &MatchConfig) -> (Option<PathMatch>, Vec<String>) {
    p.unknown(at, &m.unknown);
    let case_flag = if m.ignore_case.unwrap_or(defaults::IGNORE_CASE) {
        "(?i)"
    } else {
        ""
    };
    let path = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Some(PathMatch::Exact(e.clone())),
        (None, Some(prefix), None) => Some(PathMatch::Prefix(prefix.clone())),
        (None, None, Some(r)) => match regex::Regex::new(&format!("{case_flag}^(?:{r})$")) {
            Ok(re) => Some(PathMatch::Regex(re)),
            Err(e) => {
                p.add(
                    at,
                    format_args!(
                        "invalid regex: {}",
                        e.to_string().lines().last().unwrap_or("")
                    ),
                );
                None
            }
        },
        _ => {
            p.add(
                at,
                "exactly one of \"exact\", \"prefix\" or \"regex\" is required",
            );
            None
        }
    };
    if let Some(PathMatch::Exact(s) | PathMatch::Prefix(s)) = &path {
        if !s.starts_with('/') {
            p.add(at, "paths start with \"/\"");
        }
    }
    let mut methods = Vec::new();
    for (i, method) in m.methods.iter().flatten().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            p.add(
                &format!("{at}.methods[{i}]"),
                format_args!("invalid method \"{method}\""),
            );
        }
        methods.push(method.to_ascii_uppercase());
    }
    (path, methods)
}

fn parse_provider(
    p: &mut Problems,
    at: &str,
    c: &ProviderConfig,
) -> Option<(Provider, JwksSource)> {
    p.unknown(at, &c.unknown);
    let issuer = p.required(at, "issuer", &c.issuer);
    if c.audiences.is_empty() {
        p.add(at, "\"audiences\" must list at least one audience (tokens for other services must not pass)");
    }
    let hmac_key = match &c.hmac_secret_base64 {
        None => None,
        Some(secret) => match STANDARD
            .decode(secret)
            .map_err(|e| e.to_string())
            .and_then(|bytes| VerificationKey::hmac(&bytes).map_err(|e| e.to_string()))
        {
            Ok(key) => Some(key),
            Err(e) => {
                p.add(at, format_args!("hmac_secret_base64: {e}"));
                None
            }
        },
    };
    let source = match p.required(at, "jwks", &c.jwks) {
        None => None,
        Some(jwks) => {
            let at = format!("{at}.jwks");
            p.unknown(&at, &jwks.unknown);
            match (&jwks.inline, &jwks.remote) {
                (Some(doc), None) => match KeySet::from_jwks_value(doc) {
                    Ok(set) => Some(JwksSource::Inline(set)),
                    Err(e) => {
                        p.add(&format!("{at}.inline"), e);
                        None
                    }
                },
                (None, Some(r)) => {
                    let at = format!("{at}.remote");
                    p.unknown(&at, &r.unknown);
                    let cluster = p.required(&at, "cluster", &r.cluster).cloned();
                    // With discovery: the issuer's host and the metadata path under it.
                    let issuer_parts = issuer.and_then(|i| discovery::authority_and_path(i));
                    let discovery_path = match (r.discovery, issuer_parts) {
                        (false, _) => None,
                        (true, Some((_, issuer_path))) => Some(format!(
                            "{}{}",
                            issuer_path.trim_end_matches('/'),
                            discovery::OPENID_CONFIGURATION
                        )),
                        (true, None) => {
                            p.add(
                                &at,
                                "discovery needs an http(s) issuer URL (or give path instead)",
                            );
                            None
                        }
                    };
                    let path = match (&r.path, r.discovery) {
                        (Some(path), false) => Some(path.clone()),
                        (None, true) => Some(String::new()),
                        (Some(_), true) => {
                            p.add(&at, "give either path or discovery, not both");
                            None
                        }
                        (None, false) => {
                            p.add(&at, "missing \"path\" (or set discovery: true)");
                            None
                        }
                    };
                    if path
                        .as_deref()
                        .is_some_and(|s| !s.is_empty() && !s.starts_with('/'))
                    {
                        p.add(&at, "path starts with \"/\"");
                    }
                    let refresh = r
                        .refresh_interval_seconds
                        .unwrap_or(defaults::REFRESH_INTERVAL_SECONDS);
                    let timeout_ms = r.timeout_ms.unwrap_or(defaults::JWKS_TIMEOUT_MS);
                    if refresh == 0 {
                        p.add(&at, "refresh_interval_seconds must be at least 1");
                    }
                    if r.min_refetch_interval_seconds == Some(0) {
                        p.add(
                            &at,
                            "min_refetch_interval_seconds must be at least 1 (0 would let random kids flood the IdP)",
                        );
                    }
                    if timeout_ms == 0 || timeout_ms > 60_000 {
                        p.add(&at, "timeout_ms must be between 1 and 60000");
                    }
                    match (cluster, path) {
                        (Some(cluster), Some(path)) => Some(JwksSource::Remote(RemoteJwks {
                            authority: r.authority.clone().unwrap_or_else(|| {
                                match (r.discovery, issuer_parts) {
                                    (true, Some((authority, _))) => authority.to_owned(),
                                    _ => cluster.clone(),
                                }
                            }),
                            cluster,
                            path,
                            discovery_path,
                            refresh_interval_seconds: refresh.max(1),
                            timeout_ms,
                            min_refetch_interval_seconds: r
                                .min_refetch_interval_seconds
                                .unwrap_or(defaults::MIN_REFETCH_INTERVAL_SECONDS),
                        })),
                        _ => None,
                    }
                }
                _ => {
                    p.add(&at, "exactly one of \"inline\" or \"remote\" is required");
                    None
                }
            }
        }
    };
    let skew = c.clock_skew_seconds.unwrap_or(defaults::CLOCK_SKEW_SECONDS);
    if skew > 600 {
        p.add(at, "clock_skew_seconds above 600 defeats expiry");
    }
    for problem in c
        .client_grant
        .iter()
        .flat_map(|g| g.problems(&format!("{at}.client_grant")))
    {
        p.0.push(problem);
    }
    let max_lifetime_seconds = lifetime_seconds(
        p,
        &format!("{at}.max_lifetime_seconds"),
        c.max_lifetime_seconds,
    );
    let provider = Provider {
        name: c
            .name
            .clone()
            .unwrap_or_else(|| issuer.cloned().unwrap_or_default()),
        issuer: issuer?.clone(),
        audiences: c.audiences.clone(),
        clock_skew_seconds: skew as i64,
        require_expiration: c.require_expiration.unwrap_or(defaults::REQUIRE_EXPIRATION),
        required_typ: c.typ.clone(),
        refuse_id_tokens: c.refuse_id_tokens.unwrap_or(false),
        max_lifetime_seconds,
        client_grant: c.client_grant.clone(),
        hmac_key,
    };
    Some((provider, source?))
}

fn parse_server_link(p: &mut Problems, s: &ServerLinkConfig) -> Option<ServerLink> {
    p.unknown("server", &s.unknown);
    let cluster = p.required("server", "cluster", &s.cluster).cloned();
    let timeout_ms = s.timeout_ms.unwrap_or(defaults::SERVER_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > 30_000 {
        p.add("server.timeout_ms", "must be between 1 and 30000");
    }
    let interval_ms = s.poll_interval_ms.unwrap_or(defaults::POLL_INTERVAL_MS);
    if let Some(token) = &s.epochs_token {
        if let Some(why) = weak_secret(token) {
            p.add("server.epochs_token", why);
        }
    }
    let max_unreachable_ms = s.max_unreachable_ms.unwrap_or(defaults::MAX_UNREACHABLE_MS);
    let push_wait_ms = match s.push_wait_ms {
        Some(ms) if ms > max_unreachable_ms / 2 => {
            p.add(
                "server.push_wait_ms",
                format_args!(
                    "must be at most half of max_unreachable_ms ({max_unreachable_ms}): a held request renews cache trust only when it answers"
                ),
            );
            ms
        }
        Some(ms) => ms,
        None => defaults::PUSH_WAIT_MS.min(max_unreachable_ms / 2),
    };
    let mut local_revocations = Vec::new();
    let tiers: Vec<String> = match &s.local_revocations {
        Some(list) => list.clone(),
        None => defaults::LOCAL_REVOCATION_TIERS
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
    };
    for (i, name) in tiers.iter().enumerate() {
        match name.parse::<Tier>() {
            Ok(tier @ (Tier::Authenticated | Tier::StandardWrite)) => {
                if !local_revocations.contains(&tier) {
                    local_revocations.push(tier);
                }
            }
            Ok(Tier::Public) => p.add(
                &format!("server.local_revocations[{i}]"),
                "public routes take no token, so nothing can be revoked on them",
            ),
            Ok(_) => p.add(
                &format!("server.local_revocations[{i}]"),
                format_args!("{name} is decided by the server, which always honours revocations"),
            ),
            Err(_) => p.add(
                &format!("server.local_revocations[{i}]"),
                format_args!("unknown tier \"{name}\""),
            ),
        }
    }
    let max_revocations = s.max_revocations.unwrap_or(defaults::MAX_REVOCATIONS);
    if max_revocations == 0 || max_revocations > 10_000_000 {
        p.add("server.max_revocations", "must be between 1 and 10000000");
    }
    let max_subject_revocations = s
        .max_subject_revocations
        .unwrap_or(defaults::MAX_SUBJECT_REVOCATIONS);
    if max_subject_revocations == 0 || max_subject_revocations > 10_000_000 {
        p.add(
            "server.max_subject_revocations",
            "must be between 1 and 10000000",
        );
    }
    let epochs = match (&s.epochs_cluster, &s.epochs_token) {
        (Some(cluster), Some(token)) if interval_ms > 0 => Some(EpochsPoll {
            authority: s
                .epochs_authority
                .clone()
                .unwrap_or_else(|| cluster.clone()),
            cluster: cluster.clone(),
            token: token.clone(),
            interval_ms,
            push_wait_ms,
        }),
        (None, None) => None,
        (Some(_), Some(_)) => None,
        _ => {
            p.add(
                "server",
                "\"epochs_cluster\" and \"epochs_token\" go together",
            );
            None
        }
    };
    // Revocations reach a worker only through the feed: without one, no tier honours them
    // locally.
    if epochs.is_none() {
        local_revocations.clear();
    }
    let client_locality = s.client_locality.clone();
    if let Some(locality) = &client_locality {
        let well_formed = locality.len() <= 128
            && locality
                .split_once('/')
                .is_some_and(|(region, zone)| !region.is_empty() && !zone.is_empty())
            && locality.bytes().all(is_locality_byte);
        if !well_formed {
            p.add(
                "server.client_locality",
                "must be region/zone (letters, digits, - _ . only; at most 128 characters)",
            );
        }
    }
    Some(ServerLink {
        cluster: cluster?,
        timeout_ms,
        epochs,
        max_unreachable_ms,
        local_revocations,
        max_revocations,
        max_subject_revocations,
        opaque_tokens: s.opaque_tokens.unwrap_or(false),
        client_locality,
    })
}

fn parse_cache(p: &mut Problems, c: &Option<CacheConfig>) -> CacheSettings {
    let mut caps = crate::decision_cache::TierCaps::default();
    let Some(c) = c else {
        return CacheSettings {
            max_entries: defaults::CACHE_MAX_ENTRIES,
            caps,
            jwt_ttl_ms: defaults::JWT_TTL_MS,
        };
    };
    p.unknown("cache", &c.unknown);
    for (name, ms) in &c.tier_max_ms {
        match name.parse::<Tier>() {
            Ok(tier) => caps.set(tier, *ms),
            Err(_) => p.add(&format!("cache.tier_max_ms.{name}"), "unknown tier"),
        }
    }
    caps.deny_ms = c.deny_ttl_ms.unwrap_or(defaults::DENY_TTL_MS);
    let max_entries = c.max_entries.unwrap_or(defaults::CACHE_MAX_ENTRIES);
    if max_entries == 0 || max_entries > 10_000_000 {
        p.add("cache.max_entries", "must be between 1 and 10000000");
    }
    CacheSettings {
        max_entries: max_entries.max(1),
        caps,
        jwt_ttl_ms: c.jwt_ttl_ms.unwrap_or(defaults::JWT_TTL_MS),
    }
}

fn parse_headers(p: &mut Problems, c: &Option<HeadersConfig>) -> HeaderNames {
    let get = |v: Option<&Option<String>>, default: &str| {
        v.and_then(|s| s.clone())
            .unwrap_or_else(|| default.to_owned())
    };
    let names = HeaderNames {
        subject: get(c.as_ref().map(|h| &h.subject), defaults::SUBJECT_HEADER),
        subject_kind: get(
            c.as_ref().map(|h| &h.subject_kind),
            defaults::SUBJECT_KIND_HEADER,
        ),
        scopes: get(c.as_ref().map(|h| &h.scopes), defaults::SCOPES_HEADER),
        tier: get(c.as_ref().map(|h| &h.tier), defaults::TIER_HEADER),
        issuer: get(c.as_ref().map(|h| &h.issuer), defaults::ISSUER_HEADER),
        claims: c
            .as_ref()
            .map(|h| h.claims.clone().into_iter().collect())
            .unwrap_or_default(),
    };
    if let Some(h) = c {
        p.unknown("headers", &h.unknown);
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in names.all() {
        if !valid_header_name(name) {
            p.add(
                "headers",
                format_args!("\"{name}\" is not a usable lower-case header name"),
            );
        }
        if !seen.insert(name) {
            p.add("headers", format_args!("\"{name}\" is used twice"));
        }
    }
    names
}

fn parse_routes(
    p: &mut Problems,
    routes_config: &[RouteConfig],
    default_config: &Option<RouteTargetConfig>,
) -> Option<RouteTable> {
    let mut routes = Vec::new();
    for (i, rc) in routes_config.iter().enumerate() {
        let at = format!("routes[{i}]");
        p.unknown(&at, &rc.unknown);
        let tier = parse_tier(p, &at, &rc.tier);
        let (path, methods) = match p.required(&at, "match", &rc.matcher) {
            Some(m) => parse_match(p, &format!("{at}.match"), m),
            None => (None, Vec::new()),
        };
        let require = parse_requirements(p, &format!("{at}.require"), tier, &rc.require);
        if let Some(ms) = rc.fresh_cache_ms {
            if !matches!(tier, Tier::Authenticated | Tier::StandardWrite) {
                p.add(
                    &format!("{at}.fresh_cache_ms"),
                    format_args!("only authenticated and standard_write routes are decided locally; {tier} is not"),
                );
            }
            if ms > 60_000 {
                p.add(
                    &format!("{at}.fresh_cache_ms"),
                    "must be between 0 and 60000",
                );
            }
        }
        if let Some(ms) = rc.background_check_ms {
            check_background_route(p, &at, tier, &methods, ms, rc.fresh_cache_ms.is_some());
        }
        let name = rc.name.clone().unwrap_or_else(|| at.clone());
        // Names key cached decisions and appear in logs: two routes must never share one.
        if name == "default" || routes.iter().any(|r: &Route| r.name == name) {
            p.add(
                &at,
                format_args!(
                    "route name \"{name}\" is used twice (\"default\" is the default route's)"
                ),
            );
        }
        if let Some(path) = path {
            routes.push(Route {
                name,
                path: Some(path),
                methods,
                ignore_case: rc
                    .matcher
                    .as_ref()
                    .and_then(|m| m.ignore_case)
                    .unwrap_or(defaults::IGNORE_CASE),
                tier,
                require,
                fresh_cache_ms: rc.fresh_cache_ms,
                background_check_ms: rc.background_check_ms,
            });
        }
    }
    let default = match default_config {
        None => {
            p.add(
                "default",
                "an explicit default route ({\"tier\": ...}) is required",
            );
            None
        }
        Some(d) => {
            p.unknown("default", &d.unknown);
            let tier = parse_tier(p, "default", &d.tier);
            let require = parse_requirements(p, "default.require", tier, &d.require);
            Some(Route {
                name: "default".into(),
                path: None,
                methods: Vec::new(),
                ignore_case: true,
                tier,
                require,
                fresh_cache_ms: None,
                background_check_ms: None,
            })
        }
    };
    Some(RouteTable {
        routes,
        default: default?,
    })
}

/// The route settings that need a link to the server: `fresh_cache_ms` asks it (so needs
/// `server`), `background_check_ms` needs its change feed honouring revocations on
/// `authenticated` routes.
fn check_route_links(
    p: &mut Problems,
    routes: &[RouteConfig],
    has_server: bool,
    server: Option<&ServerLink>,
) {
    let feed_revokes_reads = server
        .is_some_and(|s| s.epochs.is_some() && s.local_revocations.contains(&Tier::Authenticated));
    for (i, route) in routes.iter().enumerate() {
        if route.fresh_cache_ms.is_some() && !has_server {
            p.add(
                &format!("routes[{i}].fresh_cache_ms"),
                "asks the server, so it needs \"server\"",
            );
        }
        if route.background_check_ms.is_some() && !feed_revokes_reads {
            p.add(
                &format!("routes[{i}].background_check_ms"),
                "needs \"server\" with the change feed (epochs_cluster) and authenticated in server.local_revocations: that is how a refusal reaches every worker",
            );
        }
    }
}

/// Builds a route table from route rules and a default, as the filter does, naming every
/// problem. The ext_authz server uses this so one policy drives both.
pub fn route_table_from_config(
    routes: &[RouteConfig],
    default: &Option<RouteTargetConfig>,
) -> Result<RouteTable, Vec<String>> {
    let mut p = Problems(Vec::new());
    let table = parse_routes(&mut p, routes, default);
    match table {
        Some(table) if p.0.is_empty() => Ok(table),
        _ => Err(p.0),
    }
}

impl Policy {
    /// The server's change feed, when the filter reads one.
    pub fn feed(&self) -> Option<&EpochsPoll> {
        self.server.as_ref()?.epochs.as_ref()
    }

    /// Parses and validates a JSON configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, Error> {
        Policy::from_json_with_env(bytes, &|_| None)
    }

    /// [`Policy::from_json`], with `${NAME}` references in `server.epochs_token` taken from
    /// `env` (the filter passes its Wasm VM's environment): the feed secret can come from a
    /// Kubernetes Secret through the proxy's environment. A reference `env` cannot resolve is a
    /// configuration problem, named.
    pub fn from_json_with_env(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Policy, Error> {
        let mut config: FilterConfig = serde_json::from_slice(bytes).map_err(|e| {
            Error::InvalidConfig(vec![format!("not a valid configuration document: {e}")])
        })?;
        let mut unset = Vec::new();
        if let Some(token) = config.server.as_mut().and_then(|s| s.epochs_token.as_mut()) {
            let (expanded, missing) = crate::env_refs::expand(token, env);
            *token = expanded;
            unset = missing;
        }
        match Policy::from_config(&config) {
            Ok(policy) if unset.is_empty() => Ok(policy),
            result => {
                let mut problems: Vec<String> = unset
                    .iter()
                    .map(|name| {
                        format!(
                            "server.epochs_token: ${{{name}}} is not set in the filter's environment (Envoy: vm_config.environment_variables.host_env_keys; Istio: WasmPlugin vmConfig.env with valueFrom: HOST)"
                        )
                    })
                    .collect();
                if let Err(Error::InvalidConfig(more)) = result {
                    problems.extend(more);
                }
                Err(Error::InvalidConfig(problems))
            }
        }
    }

    /// Validates a parsed configuration, reporting every problem.
    pub fn from_config(c: &FilterConfig) -> Result<Policy, Error> {
        let mut p = Problems(Vec::new());
        p.unknown("config", &c.unknown);
        if c.providers.is_empty() {
            p.add("providers", "at least one provider is required");
        }
        let mut providers = Vec::new();
        let mut jwks_sources = Vec::new();
        for (i, pc) in c.providers.iter().enumerate() {
            if let Some((provider, source)) = parse_provider(&mut p, &format!("providers[{i}]"), pc)
            {
                if providers
                    .iter()
                    .any(|q: &Provider| crate::verify::same_issuer(&q.issuer, &provider.issuer))
                {
                    p.add(
                        &format!("providers[{i}]"),
                        format_args!("issuer \"{}\" is configured twice", provider.issuer),
                    );
                }
                providers.push(provider);
                jwks_sources.push(source);
            }
        }
        let routes = parse_routes(&mut p, &c.routes, &c.default);
        let headers = parse_headers(&mut p, &c.headers);
        let realm = c.realm.clone().unwrap_or_else(|| defaults::REALM.into());
        if realm.is_empty()
            || !realm
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            p.add(
                "realm",
                "must be printable ascii without quotes or backslashes",
            );
        }
        let key_wait_timeout_ms = c
            .key_wait_timeout_ms
            .unwrap_or(defaults::KEY_WAIT_TIMEOUT_MS);
        if key_wait_timeout_ms > 30_000 {
            p.add("key_wait_timeout_ms", "must be at most 30000");
        }
        let max_token_bytes = c.max_token_bytes.unwrap_or(defaults::MAX_TOKEN_BYTES);
        if !TOKEN_BYTES_RANGE.contains(&max_token_bytes) {
            p.add("max_token_bytes", TOKEN_BYTES_RANGE_TEXT);
        }
        let log_allows_per_million = c.log_allows_per_million.unwrap_or(0);
        if log_allows_per_million > 1_000_000 {
            p.add("log_allows_per_million", "must be at most 1000000");
        }
        let server = c.server.as_ref().and_then(|s| parse_server_link(&mut p, s));
        check_route_links(&mut p, &c.routes, c.server.is_some(), server.as_ref());
        let cache = parse_cache(&mut p, &c.cache);
        let context = parse_context(&mut p, c, &headers, server.as_ref());
        let status_lists = parse_status_lists(&mut p, c, server.as_ref());
        if !p.0.is_empty() {
            return Err(Error::InvalidConfig(p.0));
        }
        let routes = routes.ok_or_else(|| Error::InvalidConfig(vec!["default: missing".into()]))?;
        Ok(Policy {
            providers,
            jwks_sources,
            routes,
            realm,
            headers,
            key_wait_timeout_ms,
            max_token_bytes,
            forward_token: c.forward_token.unwrap_or(defaults::FORWARD_TOKEN),
            log_allows_per_million,
            server,
            cache,
            requests: c.requests.unwrap_or_default(),
            context,
            status_lists,
        })
    }

    /// The route table of `policy` (a candidate or a promoted route policy) for this
    /// configuration: checked as the configuration's own routes are, the settings that need
    /// the server link included, every problem named.
    pub fn route_table_of(
        &self,
        policy: &crate::canary::RoutePolicy,
    ) -> Result<RouteTable, Vec<String>> {
        let (routes, default) = policy.configs()?;
        let mut p = Problems(Vec::new());
        let table = parse_routes(&mut p, &routes, &default);
        check_route_links(&mut p, &routes, self.server.is_some(), self.server.as_ref());
        match table {
            Some(table) if p.0.is_empty() => Ok(table),
            _ => Err(p.0),
        }
    }

    /// Provider `index`'s inline key set, if its keys are configured inline.
    pub fn inline_keys(&self, index: usize) -> Option<&KeySet> {
        match self.jwks_sources.get(index)? {
            JwksSource::Inline(set) => Some(set),
            JwksSource::Remote(_) => None,
        }
    }

    /// Remote JWKS sources with their provider index.
    pub fn remote_sources(&self) -> impl Iterator<Item = (usize, &RemoteJwks)> {
        self.jwks_sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                JwksSource::Remote(r) => Some((i, r)),
                JwksSource::Inline(_) => None,
            })
    }
}

/// A configured maximum token lifetime (seconds) checked against
/// [`crate::verify::MAX_LIFETIME_RANGE`].
fn lifetime_seconds(p: &mut Problems, at: &str, value: Option<u64>) -> Option<i64> {
    let value = value?;
    if !crate::verify::MAX_LIFETIME_RANGE.contains(&value) {
        p.add(at, crate::verify::MAX_LIFETIME_RANGE_TEXT);
    }
    i64::try_from(value).ok()
}

/// A byte a `region/zone` locality may hold: letters, digits, `-`, `_`, `.`, `/`.
pub fn is_locality_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_./".contains(&b)
}

#[cfg(test)]
pub(crate) mod tests;
