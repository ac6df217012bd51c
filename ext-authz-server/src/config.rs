//! The server's configuration file (YAML), and its validation. Every problem is reported at
//! once, each with its place (`introspection.endpoint: ...`); `main` prints them and exits
//! non-zero before binding any port.
//!
//! The `policy` section uses the filter's route-rule types from `authz-core`, so one set of
//! route rules (tiers, scopes, claims, tenants) can drive both.

use crate::error::ServerError;
use authz_core::config::weak_secret;
use authz_core::config::{route_table_from_config, RouteConfig, RouteTargetConfig};
use authz_core::fallback::{StepUp, StepUpAppliesTo, TierRules};
use authz_core::routes::RouteTable;
use authz_core::verify::{TOKEN_BYTES_RANGE, TOKEN_BYTES_RANGE_TEXT};
use authz_core::Tier;
use serde::Deserialize;
use serde_yaml::Mapping;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Every default of the server configuration, named once: the validator applies these, and
/// the generated reference (`docs/config-reference.md`) prints them from the schema.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:9191";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9192";
    pub const REGION: &str = "local";
    pub const ZONE: &str = "local";
    pub const REALM: &str = "api";
    pub const CHECK_TIMEOUT_MS: u64 = 2_000;
    pub const DRAIN_MS: u64 = 500;
    pub const AUTH_METHOD: &str = "client_secret_basic";
    pub const INTROSPECTION_TIMEOUT_MS: u64 = 1_000;
    pub const MAX_IDLE_CONNECTIONS: usize = 32;
    pub const MAX_CALLS_PER_SECOND: u32 = 200;
    pub const REQUIRE_AUDIENCE: bool = true;
    pub const FEED_MAX_HELD: usize = 16_384;
    pub const FEED_MAX_HELD_PER_TOKEN: usize = 4_096;
    /// 64 MiB/s per feed secret: a 200,000-revocation state (about 20 MB) read whole by
    /// three workers a second.
    pub const FEED_CATCH_UP_BYTES_PER_SECOND: u64 = 64 << 20;
    pub const CLOCK_SKEW_SECONDS: u64 = 60;
    pub const TOKEN_MAX_BYTES: usize = authz_core::verify::DEFAULT_MAX_TOKEN_BYTES;
    pub const CACHE_MAX_ENTRIES: u64 = 100_000;
    pub const CACHE_CAP_SECONDS: u64 = 300;
    pub const INACTIVE_TTL_SECONDS: u64 = 5;
    pub const REFRESH_AHEAD_FRACTION: f64 = 0.5;
    pub const BATCH_WINDOW_MS: u64 = 2;
    pub const MAX_BATCH: usize = 64;
    pub const CIRCUIT_FAILURE_THRESHOLD: u32 = 5;
    pub const CIRCUIT_OPEN_MS: u64 = 2_000;
    pub const FORWARD_TOKEN: bool = false;
    pub const REDIS_KEY_PREFIX: &str = "authz:v1:";
    pub const REDIS_OP_TIMEOUT_MS: u64 = 50;
    pub const REDIS_BLOCK_MS: u64 = 500;
    pub const REDIS_MAX_UNCONFIRMED_MS: u64 = 1_500;
    pub const REDIS_STREAM_MAX_LEN: u64 = 1_000_000;
    pub const REDIS_SHARED_CACHE: bool = true;
    pub const REDIS_MIN_REPLICAS: u32 = 0;
    pub const REDIS_REPLICA_WAIT_MS: u64 = 200;
    pub const JWKS_REFRESH_INTERVAL_SECONDS: u64 = 300;
    pub const JWKS_MIN_REFETCH_INTERVAL_SECONDS: u64 = 30;
    pub const JWKS_TIMEOUT_MS: u64 = 2_000;
}

/// The file as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct ServerConfigFile {
    /// gRPC address (Check and `grpc.health.v1`).
    #[schemars(extend("default" = defaults::LISTEN))]
    pub listen: Option<String>,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`, `/admin/*`).
    #[schemars(extend("default" = defaults::ADMIN_LISTEN))]
    pub admin_listen: Option<String>,
    /// Required, at least 16 characters: bearer secret of the admin endpoints.
    pub admin_token: Option<String>,
    /// A second bearer secret, accepted only by `GET /admin/epochs` (for the filter). With
    /// `context` its answers carry the signing keys: treat it as a signing secret.
    pub epochs_token: Option<String>,
    /// More feed secrets, each as `epochs_token` (one per proxy fleet, and two while one is
    /// rotated); each is counted apart for `feed.max_held_per_token`.
    #[serde(default)]
    pub epochs_tokens: Vec<String>,
    /// Limits of the change feed.
    #[serde(default)]
    pub feed: FeedFile,
    /// This instance's region, in decision logs.
    #[schemars(extend("default" = defaults::REGION))]
    pub region: Option<String>,
    /// This instance's zone, in decision logs.
    #[schemars(extend("default" = defaults::ZONE))]
    pub zone: Option<String>,
    /// `realm` in `WWW-Authenticate` (use the filter's).
    #[schemars(extend("default" = defaults::REALM))]
    pub realm: Option<String>,
    /// Deadline of one check; past it the answer is a fail-closed 503.
    #[schemars(extend("default" = defaults::CHECK_TIMEOUT_MS))]
    pub check_timeout_ms: Option<u64>,
    /// After SIGTERM: NOT_SERVING and `/readyz` 503 for this long, then stop.
    #[schemars(extend("default" = defaults::DRAIN_MS))]
    pub drain_ms: Option<u64>,
    /// Required: the OAuth2 introspection endpoint (RFC 7662) and its client.
    pub introspection: Option<IntrospectionFile>,
    /// PEM file of the CA (or CAs) that signed the IdP's certificate, when it is not a public
    /// one; trusted besides the public roots (webpki) for every IdP call.
    pub idp_ca_file: Option<String>,
    /// Allow `http://` IdP URLs to hosts that are not loopback (refused by default: the client
    /// secret, every introspected token and the keys would travel in plaintext). Logged as a
    /// warning at start.
    #[schemars(extend("default" = false))]
    pub allow_insecure_http: Option<bool>,
    /// Required: what a token must be for, checked on every introspection result with the
    /// filter's rules (issuer, audience, `typ`, expiry with skew).
    pub token: Option<TokenFile>,
    /// The introspection result cache.
    #[serde(default)]
    pub cache: CacheFile,
    /// Batching of concurrent cache misses into one IdP call.
    #[serde(default)]
    pub batching: BatchingFile,
    /// Failing fast while the IdP keeps failing.
    #[serde(default)]
    pub circuit_breaker: CircuitFile,
    /// Per-tier freshness and fallback (`authenticated`, `standard_write`, `privileged`,
    /// `regulated`); defaults in the README's tier table.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierFile>,
    /// Rate limits; over budget answers 429.
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
    /// Required: route rules, the filter's syntax (`routes[]`, `default`).
    pub policy: Option<PolicyFile>,
    /// Client request headers removed on every allow, in addition to the standard context
    /// headers (`x-auth-subject`, `x-auth-subject-kind`, `x-auth-scopes`, `x-auth-tier`,
    /// `x-auth-issuer`, `x-authz-policy-version`, always removed): list every other header your filter sets
    /// (renamed context headers, `headers.claims` mappings; `authz-config render` fills it),
    /// so a client cannot smuggle them past a route this server guards (no filter runs there).
    pub strip_headers: Option<Vec<String>>,
    /// Keep `authorization` on allowed requests (as the filter).
    #[schemars(extend("default" = defaults::FORWARD_TOKEN))]
    pub forward_token: Option<bool>,
    /// Requests upstreams may read differently than the route table does (the filter's
    /// `requests`): method-override headers and encoded reserved characters in the path are
    /// refused (400) by default.
    pub requests: Option<authz_core::target::RequestRules>,
    /// The optional shared tier (several instances, one Redis).
    pub redis: Option<RedisFile>,
    /// A signed verification context on allowed requests, and its signing keys.
    pub context: Option<authz_core::context::ContextConfig>,
    /// Token Status Lists (draft-ietf-oauth-status-list) the provider's tokens may name: this
    /// server fetches and verifies each (signed by the provider's keys, `typ:
    /// statuslist+jwt`, `iss` the token issuer, `sub` the list's URI), refuses tokens whose
    /// entry is set, and publishes those entries through the change feed.
    pub status_lists: Option<authz_core::status_list::StatusListsConfig>,
    /// Resource rules for batch authorization (`POST /authorize/batch` on the admin port, and
    /// the `authz.batch.v1.BatchAuthorization/Check` gRPC method): which resource types and
    /// actions a caller may have, and what must hold between them.
    pub resources: Option<authz_core::resources::ResourcesConfig>,
    /// Required with `resources`, at least 16 characters, unlike every other secret: the
    /// bearer secret of the batch API (the services behind the proxy that ask it hold it; it
    /// grants nothing else).
    pub batch_token: Option<String>,
    /// A file where the incident switches (`/admin/switches`) are kept, so a restarted server
    /// starts with them in force; written after every switch change, read at start. Without
    /// it and without `redis`, switches do not survive a restart (logged at start). With
    /// `redis`, Redis's state wins once read.
    pub switches_file: Option<String>,
    /// OpenTelemetry traces of checks over OTLP/HTTP (JSON): off without it.
    pub otlp: Option<crate::otlp::OtlpFile>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

/// `feed:`: what held change-feed requests may cost.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct FeedFile {
    /// Held (pushed) feed requests open at once, all credentials together; beyond it a
    /// request to hold is answered 429 (the filter then polls).
    #[schemars(extend("default" = defaults::FEED_MAX_HELD))]
    pub max_held: Option<usize>,
    /// Held feed requests open at once per feed secret (`epochs_token`, each of
    /// `epochs_tokens`, the admin token): a leaked secret cannot take every place.
    #[schemars(extend("default" = defaults::FEED_MAX_HELD_PER_TOKEN))]
    pub max_held_per_token: Option<usize>,
    /// Rows (revocations) per feed answer, 100–1000000: a large state is read in pages of
    /// about this many (about 100 bytes each), so no answer is one huge body for the filter
    /// to parse, and the state's lock is held for one page at a time.
    #[schemars(extend("default" = crate::versions::FEED_PAGE_ROWS))]
    pub page_rows: Option<usize>,
    /// Bytes per second of far reads each feed secret may be sent without having waited for
    /// a change (`since=0`, pages of a large state, re-reads after a restart: cursors more
    /// than 256 changes behind that were behind the state of 90 s ago), at least 65536; one
    /// second of it goes at once. An answer that would wait more than 0.5 s is a 429, sent
    /// after 0.5 s, with `Retry-After` (the filter waits what it says, 1–10 s). Pushed
    /// answers and a running worker's reads are never paced. Bounds what a client looping on
    /// `since=0` with a leaked feed secret costs; raise it when a large fleet must read a
    /// large state quickly after a restart (about 100 bytes per revocation, per worker).
    #[schemars(extend("default" = defaults::FEED_CATCH_UP_BYTES_PER_SECOND))]
    pub catch_up_bytes_per_second: Option<u64>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

/// `redis:`: a shared introspection cache (L2) and the revocation event stream.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct RedisFile {
    /// `redis://host:port/db`, or `rediss://…` for TLS (server certificate checked against
    /// the system roots, or `ca_file`). A password: `redis://:PASSWORD@host…` (AUTH), best
    /// taken from a Secret with `${NAME}`.
    pub url: Option<String>,
    /// PEM file of the CA that signed Redis' certificate (`rediss://` only), when it is not in
    /// the system trust store.
    pub ca_file: Option<String>,
    /// PEM client certificate and key for mutual TLS (`rediss://` only; both or neither).
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    /// Secret (at least 32 characters) that keys and encrypts shared cache entries; the same on
    /// every instance.
    pub secret: Option<String>,
    /// Prefix of every key this server uses.
    #[schemars(extend("default" = defaults::REDIS_KEY_PREFIX))]
    pub key_prefix: Option<String>,
    /// Budget for one Redis command on the check path, 1–5000.
    #[schemars(extend("default" = defaults::REDIS_OP_TIMEOUT_MS))]
    pub op_timeout_ms: Option<u64>,
    /// How long the stream reader blocks per read, 10–5000.
    #[schemars(extend("default" = defaults::REDIS_BLOCK_MS))]
    pub block_ms: Option<u64>,
    /// How long after the last good stream read the shared state stops being trusted as
    /// current (above `block_ms`).
    #[schemars(extend("default" = defaults::REDIS_MAX_UNCONFIRMED_MS))]
    pub max_unconfirmed_ms: Option<u64>,
    /// Events kept in the stream (approximate trimming), at least 1000.
    #[schemars(extend("default" = defaults::REDIS_STREAM_MAX_LEN))]
    pub stream_max_len: Option<u64>,
    /// Whether introspection results are shared through Redis.
    #[schemars(extend("default" = defaults::REDIS_SHARED_CACHE))]
    pub shared_cache: Option<bool>,
    /// Redis Sentinel instead of `url`: the server asks the sentinels for the primary at
    /// every (re)connection, checks that it answers `ROLE` as a primary, and so follows a
    /// failover by itself.
    pub sentinel: Option<SentinelFile>,
    /// Redis Cluster instead of `url`: the revocation stream and its snapshot share one hash
    /// tag (`{key_prefix}`), so one slot; at every session the server asks the seed nodes
    /// which primary serves it, reads and publishes there, asks it periodically whether it
    /// still does, and so follows a promoted replica by itself. Cache entries spread over the
    /// cluster.
    pub cluster: Option<ClusterFile>,
    /// Replicas that must hold a change (`WAIT`) before it counts as published (the admin
    /// API's `"shared": "published"`); 0 does not wait. With Sentinel set 1 or more: a change
    /// only the failed primary held is otherwise lost in a failover.
    #[schemars(extend("default" = defaults::REDIS_MIN_REPLICAS))]
    pub min_replicas: Option<u32>,
    /// How long a publication waits for those replicas, 1–5000 ms; fewer by then: the admin
    /// API answers `"unreplicated"` (every instance still applies it; if a failover finds it
    /// missing, the instances that hold it republish it).
    #[schemars(extend("default" = defaults::REDIS_REPLICA_WAIT_MS))]
    pub replica_wait_ms: Option<u64>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

/// `redis.cluster`: the nodes of a Redis Cluster.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct ClusterFile {
    /// Some of the cluster's nodes, `redis://host:port` each (at least one; the server learns
    /// the others from them).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The nodes' password (AUTH), best taken from a Secret with `${NAME}`. Plain TCP (no TLS
    /// with cluster yet); no ACL user names.
    pub password: Option<String>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

/// `redis.sentinel`: where the primary is found.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct SentinelFile {
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME …`).
    pub master_name: Option<String>,
    /// The sentinels, `redis://host:port` each (at least one; list them all: all are asked at
    /// once, 0.5 s each, and the primary a majority of those listed names is used, so a
    /// sentinel gone for good counts against the majority; give the port, the default is
    /// Redis's 6379, not Sentinel's 26379).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The primary's (and replicas') password (AUTH), best taken from a Secret with `${NAME}`.
    /// The link to the primary is plain TCP (no TLS with sentinel yet); a sentinel's own
    /// password goes in its address (`redis://:PASSWORD@host:26379`). No ACL user names.
    pub password: Option<String>,
    /// The database number on the primary.
    pub db: Option<i64>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

/// What a token must be for (the filter's provider rules, applied to introspection results).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct TokenFile {
    /// Required: the issuer. An introspection answer naming another `iss` is refused (401).
    pub issuer: Option<String>,
    /// Required: accepted audiences. An answer whose `aud` (string or array) names none of
    /// them is refused (401).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Refuse answers that carry no `aud`, or an empty list (RFC 7662 makes `aud` optional,
    /// and an audience-less token is usable at every API of its issuer). Turn it off only for
    /// an IdP that never reports audiences, where the token is for this API alone.
    #[schemars(extend("default" = defaults::REQUIRE_AUDIENCE))]
    pub require_audience: Option<bool>,
    /// For JWT-shaped tokens: the JWS header `typ` must equal this (e.g. `at+jwt`, so ID
    /// tokens are refused). Opaque tokens have no header and are not affected.
    pub typ: Option<String>,
    /// Refuse tokens (JWTs, and introspection answers) with an ID token's markers (`nonce`,
    /// `at_hash`, `c_hash`, `s_hash`): for IdPs whose access tokens say `typ: JWT` like their
    /// ID tokens.
    #[schemars(extend("default" = false))]
    pub refuse_id_tokens: Option<bool>,
    /// Longest accepted token lifetime (`exp` − `iat`), seconds, 60–31536000: longer-lived
    /// tokens and tokens without `exp` are refused. It also bounds how long a revocation is
    /// kept: a token revocation whose token's expiry is not known is kept this long (plus the
    /// clock skew) after it is made, and a subject revocation too, instead of until the cap.
    /// Give the filter's providers the same value. Default: no limit.
    pub max_lifetime_seconds: Option<u64>,
    /// A claim whose value marks client-credentials tokens that carry a `sub` (`{claim: gty,
    /// values: [client-credentials]}` for Auth0), in JWTs and introspection answers: such a
    /// token's principal is the client. Give the filter's providers the same.
    pub client_grant: Option<authz_core::principal::ClientGrant>,
    /// Leeway for `exp`/`nbf`/`iat`, seconds, at most 600.
    #[schemars(extend("default" = defaults::CLOCK_SKEW_SECONDS))]
    pub clock_skew_seconds: Option<u64>,
    /// Longest accepted token, in bytes, 256–65536 (longer ones are refused before any IdP
    /// call); the default is the filter's `max_token_bytes` default.
    #[schemars(extend("default" = defaults::TOKEN_MAX_BYTES))]
    pub max_bytes: Option<usize>,
    /// Read the provider's metadata from `issuer` (`/.well-known/openid-configuration`, else
    /// `/.well-known/oauth-authorization-server`): `jwks_uri`, `introspection_endpoint` and
    /// the auth methods it supports; refreshed like the keys; a document naming another
    /// `issuer` is refused. Explicit `introspection.endpoint` / `token.jwks_uri` win over it;
    /// beside an explicit `introspection.endpoint` it finds the keys only, and does not hold
    /// up readiness: until the keys load, JWTs are introspected (logged as
    /// `provider_keys_missing`). Default: on when `issuer` is an http(s) URL, or when
    /// `introspection.endpoint` is not given.
    pub discovery: Option<bool>,
    /// Where the provider's signing keys are (JWKS): JWT access tokens are then verified by the
    /// server itself (the filter's rules), without an IdP call. Else from discovery, if on.
    pub jwks_uri: Option<String>,
    /// `verify`: JWT access tokens are verified against the provider's keys and our revocation
    /// state, never introspected (the default when keys are known: many IdPs refuse to
    /// introspect JWTs), unless the route's `require.introspect` asks for the IdP's word.
    /// `introspect`: every token goes to the introspection endpoint.
    pub jwt_access_tokens: Option<String>,
    /// Scheduled refresh of the keys (and discovered metadata), seconds.
    #[schemars(extend("default" = defaults::JWKS_REFRESH_INTERVAL_SECONDS))]
    pub jwks_refresh_interval_seconds: Option<u64>,
    /// At most one refetch per this many seconds for a token the keys fail (unknown `kid`, or a
    /// signature the key behind its `kid` rejects: a rotation).
    #[schemars(extend("default" = defaults::JWKS_MIN_REFETCH_INTERVAL_SECONDS))]
    pub jwks_min_refetch_interval_seconds: Option<u64>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

/// Headers always removed from allowed requests (the standard context headers), to which
/// `strip_headers` adds: whatever a client sends under these names never reaches an upstream.
pub const DEFAULT_STRIP_HEADERS: [&str; 7] = authz_core::config::STANDARD_CONTEXT_HEADERS;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct IntrospectionFile {
    /// The introspection URL (http or https). Required unless `token.discovery` finds it.
    pub endpoint: Option<String>,
    /// The batch endpoint (docs/batch-introspection.md); without it, batches go out as
    /// concurrent single calls.
    pub batch_endpoint: Option<String>,
    /// The server's client id at the IdP (required unless `auth_method: none`).
    pub client_id: Option<String>,
    /// The server's client secret at the IdP (required unless `private_key_jwt` or `none`).
    pub client_secret: Option<String>,
    /// `client_secret_basic` (id and secret form-urlencoded, RFC 6749 §2.3.1),
    /// `client_secret_post`, `private_key_jwt` (RFC 7523: a short-lived assertion signed
    /// with `private_key_file`), or `none` (no client authentication: for an endpoint only this
    /// server can reach, such as Ory Hydra's admin port; warned about at start).
    #[schemars(extend("default" = defaults::AUTH_METHOD))]
    pub auth_method: Option<String>,
    /// For `private_key_jwt`: a PEM file with the client's private key (PKCS#8 or PKCS#1
    /// RSA, or PKCS#8 / SEC1 P-256 EC), whose public key the IdP has for this client.
    pub private_key_file: Option<String>,
    /// For `private_key_jwt`: `RS256` or `ES256` (must fit the key).
    pub private_key_alg: Option<String>,
    /// For `private_key_jwt`: the `kid` the IdP knows the key by, if it needs one.
    pub private_key_kid: Option<String>,
    /// Deadline of one IdP call, 1–30000.
    #[schemars(extend("default" = defaults::INTROSPECTION_TIMEOUT_MS))]
    pub timeout_ms: Option<u64>,
    /// Pooled keep-alive connections to the IdP.
    #[schemars(extend("default" = defaults::MAX_IDLE_CONNECTIONS))]
    pub max_idle_connections: Option<usize>,
    /// Cap on introspection calls per second, all tokens and addresses together; over it a
    /// check that needs the IdP answers as if the IdP failed (stale answer where the tier
    /// allows one, else 503), without counting against the circuit breaker; 0 turns the cap
    /// off.
    #[schemars(extend("default" = defaults::MAX_CALLS_PER_SECOND))]
    pub max_calls_per_second: Option<u32>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct CacheFile {
    /// Entry cap (least useful entries go first), at least 1.
    #[schemars(extend("default" = defaults::CACHE_MAX_ENTRIES))]
    pub max_entries: Option<u64>,
    /// Longest life of an entry (also bounded by the token's `exp` and the longest tier
    /// window).
    #[schemars(extend("default" = defaults::CACHE_CAP_SECONDS))]
    pub cap_seconds: Option<u64>,
    /// Life of an "inactive" answer.
    #[schemars(extend("default" = defaults::INACTIVE_TTL_SECONDS))]
    pub inactive_ttl_seconds: Option<u64>,
    /// A hit older than this fraction of its tier's freshness starts a background refresh,
    /// 0–1.
    #[schemars(extend("default" = defaults::REFRESH_AHEAD_FRACTION))]
    pub refresh_ahead_fraction: Option<f64>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct BatchingFile {
    /// How long a miss waits for others to join its batch, at most 50; 0 turns batching off.
    #[schemars(extend("default" = defaults::BATCH_WINDOW_MS))]
    pub window_ms: Option<u64>,
    /// Tokens per batch, 1–1000.
    #[schemars(extend("default" = defaults::MAX_BATCH))]
    pub max_batch: Option<usize>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct CircuitFile {
    /// Consecutive IdP failures that open the circuit.
    #[schemars(extend("default" = defaults::CIRCUIT_FAILURE_THRESHOLD))]
    pub failure_threshold: Option<u32>,
    /// How long it stays open before one probe call.
    #[schemars(extend("default" = defaults::CIRCUIT_OPEN_MS))]
    pub open_ms: Option<u64>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct TierFile {
    /// Oldest introspection data a check of this tier uses while the IdP answers.
    pub max_staleness_ms: Option<u64>,
    /// Extra age allowed while the IdP fails; must be 0 for `privileged` and `regulated`.
    pub stale_if_error_ms: Option<u64>,
    /// Require a recent or strong authentication (RFC 9470 challenge otherwise).
    pub step_up: Option<StepUpFile>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct StepUpFile {
    /// Oldest accepted `auth_time`.
    pub max_auth_age_seconds: Option<i64>,
    /// Accepted `acr` values (any one).
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// `user_tokens`: tokens a user signed in for (any token with a `sub`); client tokens
    /// (client credentials without a `sub`) pass without `auth_time` or `acr`. A `sub` equal to
    /// the `client_id` does not make a client token (a user named like a client would skip
    /// step-up). `all_tokens`: every token, so client tokens are refused on this tier.
    #[schemars(extend("default" = "user_tokens"))]
    pub applies_to: Option<String>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct RateLimitsFile {
    /// Checks on privileged and regulated tiers per subject.
    pub privileged_per_subject: Option<RateFile>,
    /// Checks on privileged and regulated tiers per client address.
    pub privileged_per_address: Option<RateFile>,
    /// Failed tokens (invalid, inactive, revoked) per client address.
    pub failed_tokens_per_address: Option<RateFile>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

/// `per_second` or `per_minute`, with an optional `burst`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct RateFile {
    /// Sustained rate per second (exactly one of `per_second`, `per_minute`).
    pub per_second: Option<u32>,
    /// Sustained rate per minute.
    pub per_minute: Option<u32>,
    /// Burst allowance. Default: the rate.
    pub burst: Option<u32>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct PolicyFile {
    /// Route rules, first match wins (the filter's `routes[]`).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Required: the rule for unmatched requests (the filter's `default`).
    pub default: Option<RouteTargetConfig>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: Mapping,
}

/// How the server authenticates to the introspection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
    /// No client authentication: an introspection endpoint only the server can reach (Ory
    /// Hydra's admin port, a sidecar). Warned about at start.
    None,
    /// RFC 7523 client assertions signed with this key.
    PrivateKeyJwt(ClientKey),
}

/// The key of `private_key_jwt` client authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub algorithm: jsonwebtoken::Algorithm,
    pub kid: Option<String>,
    /// PEM, checked at load to parse for `algorithm`.
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for ClientKey {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// The signing key.
    pub fn encoding_key(&self) -> Result<jsonwebtoken::EncodingKey, jsonwebtoken::errors::Error> {
        match self.algorithm {
            jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&self.pem),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&self.pem),
        }
    }
}

/// How JWT access tokens are checked (`token.jwt_access_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAccessTokens {
    /// Verified against the provider's keys (when known), without an IdP call.
    Verify,
    /// Introspected like opaque tokens.
    Introspect,
}

/// The identity provider: how its endpoints and keys are found.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// Read `issuer`'s metadata document.
    pub discovery: bool,
    /// An explicit JWKS URL.
    pub jwks_uri: Option<String>,
    pub jwt_access_tokens: JwtAccessTokens,
    pub refresh: authz_core::jwks_refresh::RefreshRules,
    pub fetch_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    /// `None`: from discovery.
    pub endpoint: Option<String>,
    pub batch_endpoint: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    pub auth: ClientAuth,
    pub timeout: Duration,
    pub max_idle_connections: usize,
    /// Cap on IdP calls per second, all tokens together (0: no cap).
    pub max_calls_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub cap_ms: u64,
    pub inactive_ttl_ms: u64,
    pub refresh_ahead_fraction: f64,
}

/// The validated `redis:` section.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// PEM bytes for `rediss://`: a CA (None: the system roots) and an optional client pair.
    pub tls_ca: Option<Vec<u8>>,
    pub tls_client: Option<(Vec<u8>, Vec<u8>)>,
    pub secret: String,
    pub key_prefix: String,
    pub op_timeout: Duration,
    pub block: Duration,
    pub max_unconfirmed_ms: u64,
    pub stream_max_len: u64,
    pub shared_cache: bool,
    /// Sentinel instead of `url` (which is then empty).
    pub sentinel: Option<SentinelConfig>,
    /// Redis Cluster instead of `url` (which is then empty).
    pub cluster: Option<ClusterConfig>,
    /// Replicas a publication waits for (`WAIT`; 0: none), and for how long.
    pub min_replicas: u32,
    pub replica_wait: Duration,
}

/// The validated `redis.cluster` section.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Seed nodes, `redis://host:port` each.
    pub addresses: Vec<String>,
    pub password: Option<String>,
}

/// The validated `redis.sentinel` section.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    pub master_name: String,
    pub addresses: Vec<String>,
    pub password: Option<String>,
    pub db: i64,
}

#[derive(Debug, Clone)]
pub struct BatchingConfig {
    /// 0 disables batching (every token is introspected on its own, at once).
    pub window: Duration,
    pub max_batch: usize,
}

/// A rate: `cells` per `period`, with `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_period: u32,
    pub period: Duration,
    pub burst: u32,
}

#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    pub privileged_per_subject: Option<Rate>,
    pub privileged_per_address: Option<Rate>,
    pub failed_tokens_per_address: Option<Rate>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: String,
    /// Every feed secret: `epochs_token`, then `epochs_tokens`.
    pub epochs_tokens: Vec<String>,
    pub feed_max_held: usize,
    pub feed_max_held_per_token: usize,
    pub feed_page_rows: usize,
    pub feed_catch_up_bytes_per_second: u64,
    pub region: String,
    pub zone: String,
    pub realm: String,
    pub check_timeout: Duration,
    pub drain: Duration,
    pub introspection: IntrospectionConfig,
    /// Token purpose rules (the filter's `Provider` rules).
    pub token: authz_core::Provider,
    /// Where the provider's endpoints and keys come from.
    pub idp: IdpConfig,
    /// Whether an introspection answer without `aud` is refused.
    pub require_audience: bool,
    /// `token.max_bytes`.
    pub max_token_bytes: usize,
    pub cache: CacheConfig,
    pub batching: BatchingConfig,
    pub circuit_failure_threshold: u32,
    pub circuit_open_ms: u64,
    pub tiers: BTreeMap<Tier, TierRules>,
    pub rate_limits: RateLimits,
    pub routes: RouteTable,
    pub strip_headers: Vec<String>,
    pub forward_token: bool,
    pub requests: authz_core::target::RequestRules,
    /// `idp_ca_file`'s PEM, read at load.
    pub idp_ca_pem: Option<Vec<u8>>,
    pub allow_insecure_http: bool,
    pub redis: Option<RedisConfig>,
    pub context: Option<crate::context_keys::ContextKeyRing>,
    pub status_lists: Option<authz_core::status_list::StatusListsSettings>,
    /// The batch API: its rules and its secret, when configured.
    pub batch: Option<BatchSettings>,
    /// Where the incident switches are kept across restarts.
    pub switches_file: Option<std::path::PathBuf>,
    /// Where the spans of checks go, when configured.
    pub otlp: Option<crate::otlp::OtlpSettings>,
}

/// `resources` and `batch_token`, validated.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub rules: authz_core::resources::ResourceRules,
    pub token: String,
}

struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, what: impl std::fmt::Display) {
        self.0.push(format!("{at}: {what}"));
    }
    fn unknown(&mut self, at: &str, fields: &Mapping) {
        for key in fields.keys() {
            let name = key
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{key:?}"));
            self.add(at, format_args!("unknown field \"{name}\""));
        }
    }
}

fn addr(p: &mut Problems, at: &str, value: &Option<String>, default: &str) -> SocketAddr {
    let text = value.as_deref().unwrap_or(default);
    text.parse().unwrap_or_else(|_| {
        p.add(at, format_args!("\"{text}\" is not an ip:port address"));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// An IdP URL: http(s), and https unless its host is loopback or plaintext is allowed
/// explicitly (`allow_insecure_http`): the client secret, every introspected token and the
/// keys travel over it.
fn url(p: &mut Problems, at: &str, value: &str, allow_insecure_http: bool) {
    if !(value.starts_with("http://") || value.starts_with("https://")) || value.len() < 10 {
        p.add(at, format_args!("\"{value}\" is not an http(s) url"));
    } else if value.starts_with("http://") && !allow_insecure_http && !loopback_url(value) {
        p.add(
            at,
            format_args!("\"{value}\" is plaintext http to a host that is not loopback: use https (or set allow_insecure_http: true, for a trusted network only)"),
        );
    }
}

/// Whether an http(s) URL's host is a loopback name or address.
pub fn loopback_url(url: &str) -> bool {
    let Some((authority, _)) = authz_core::discovery::authority_and_path(url) else {
        return false;
    };
    // `http://localhost:1@idp.internal/` connects to idp.internal.
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn rate(p: &mut Problems, at: &str, r: &Option<RateFile>) -> Option<Rate> {
    let r = r.as_ref()?;
    p.unknown(at, &r.unknown);
    let (per_period, period) = match (r.per_second, r.per_minute) {
        (Some(n), None) => (n, Duration::from_secs(1)),
        (None, Some(n)) => (n, Duration::from_secs(60)),
        _ => {
            p.add(
                at,
                "exactly one of \"per_second\" or \"per_minute\" is required",
            );
            return None;
        }
    };
    if per_period == 0 {
        p.add(at, "a rate must be at least 1");
        return None;
    }
    let burst = r.burst.unwrap_or(per_period);
    if burst == 0 {
        p.add(at, "burst must be at least 1");
        return None;
    }
    Some(Rate {
        per_period,
        period,
        burst,
    })
}

fn expand_values(
    value: &mut serde_yaml::Value,
    env: &impl Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) {
    match value {
        serde_yaml::Value::String(text) => {
            let (expanded, missing) = expand_env(text, env);
            *text = expanded;
            unset.extend(missing);
        }
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                expand_values(item, env, unset);
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                expand_values(item, env, unset);
            }
        }
        serde_yaml::Value::Tagged(tagged) => expand_values(&mut tagged.value, env, unset),
        _ => {}
    }
}

/// Replaces every `${NAME}` whose NAME is `[A-Z_][A-Z0-9_]*` with `env(NAME)`; returns the
/// text and the names that had no value (replaced by nothing). Anything else is left as is.
pub fn expand_env(text: &str, env: &impl Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    authz_core::env_refs::expand(text, env)
}

/// The `token` section: the filter's provider rules for introspection results.
fn token_section(
    p: &mut Problems,
    t: &Option<TokenFile>,
    introspection_endpoint_given: bool,
    allow_insecure_http: bool,
) -> Option<(authz_core::Provider, bool, usize, IdpConfig)> {
    let Some(t) = t else {
        p.add(
            "token",
            "is required (issuer and audiences: what a token must be for)",
        );
        return None;
    };
    p.unknown("token", &t.unknown);
    let issuer = t.issuer.clone().unwrap_or_default();
    if issuer.is_empty() {
        p.add("token.issuer", "is required");
    }
    if t.audiences.is_empty() || t.audiences.iter().any(String::is_empty) {
        p.add(
            "token.audiences",
            "must list at least one non-empty audience",
        );
    }
    let skew = t.clock_skew_seconds.unwrap_or(defaults::CLOCK_SKEW_SECONDS);
    if skew > 600 {
        p.add("token.clock_skew_seconds", "above 600 defeats expiry");
    }
    if t.max_lifetime_seconds
        .is_some_and(|s| !authz_core::verify::MAX_LIFETIME_RANGE.contains(&s))
    {
        p.add(
            "token.max_lifetime_seconds",
            authz_core::verify::MAX_LIFETIME_RANGE_TEXT,
        );
    }
    for problem in t
        .client_grant
        .iter()
        .flat_map(|g| g.problems("token.client_grant"))
    {
        p.0.push(problem);
    }
    if t.typ.as_deref().is_some_and(str::is_empty) {
        p.add(
            "token.typ",
            "must not be empty (leave it out to accept any)",
        );
    }
    let max_bytes = t.max_bytes.unwrap_or(defaults::TOKEN_MAX_BYTES);
    if !TOKEN_BYTES_RANGE.contains(&max_bytes) {
        p.add("token.max_bytes", TOKEN_BYTES_RANGE_TEXT);
    }
    // Discovery finds the keys even beside a configured introspection endpoint (which then
    // wins): JWTs are verified here, not sent to the IdP one by one.
    let issuer_is_url = issuer.starts_with("https://") || issuer.starts_with("http://");
    let discovery = t
        .discovery
        .unwrap_or(issuer_is_url || !introspection_endpoint_given);
    if !discovery && !introspection_endpoint_given {
        p.add(
            "introspection.endpoint",
            "is required unless token.discovery finds it",
        );
    }
    if discovery && !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        p.add(
            "token.issuer",
            "must be an http(s) URL for discovery (or give introspection.endpoint and set token.discovery: false)",
        );
    } else if discovery {
        url(p, "token.issuer", &issuer, allow_insecure_http);
    }
    if let Some(uri) = &t.jwks_uri {
        url(p, "token.jwks_uri", uri, allow_insecure_http);
    }
    let jwt_access_tokens = match t.jwt_access_tokens.as_deref() {
        None | Some("verify") => JwtAccessTokens::Verify,
        Some("introspect") => JwtAccessTokens::Introspect,
        Some(other) => {
            p.add(
                "token.jwt_access_tokens",
                format_args!("\"{other}\" is not verify or introspect"),
            );
            JwtAccessTokens::Introspect
        }
    };
    let refresh_seconds = t
        .jwks_refresh_interval_seconds
        .unwrap_or(defaults::JWKS_REFRESH_INTERVAL_SECONDS);
    let refetch_seconds = t
        .jwks_min_refetch_interval_seconds
        .unwrap_or(defaults::JWKS_MIN_REFETCH_INTERVAL_SECONDS);
    if refresh_seconds == 0 || refetch_seconds == 0 {
        p.add(
            "token",
            "jwks_refresh_interval_seconds and jwks_min_refetch_interval_seconds must be at least 1",
        );
    }
    let idp = IdpConfig {
        discovery,
        jwks_uri: t.jwks_uri.clone(),
        jwt_access_tokens,
        refresh: authz_core::jwks_refresh::RefreshRules {
            refresh_interval_ms: refresh_seconds.saturating_mul(1000),
            min_refetch_interval_ms: refetch_seconds.saturating_mul(1000),
            lease_ms: defaults::JWKS_TIMEOUT_MS + 1_000,
        },
        fetch_timeout: Duration::from_millis(defaults::JWKS_TIMEOUT_MS),
    };
    Some((
        authz_core::Provider {
            name: "introspection".into(),
            issuer,
            audiences: t.audiences.clone(),
            clock_skew_seconds: i64::try_from(skew).unwrap_or(600),
            require_expiration: false,
            required_typ: t.typ.clone(),
            refuse_id_tokens: t.refuse_id_tokens.unwrap_or(false),
            max_lifetime_seconds: t.max_lifetime_seconds.and_then(|s| i64::try_from(s).ok()),
            client_grant: t.client_grant.clone(),
            hmac_key: None,
        },
        t.require_audience.unwrap_or(defaults::REQUIRE_AUDIENCE),
        max_bytes,
        idp,
    ))
}

/// `introspection`: the IdP endpoint and its client.
/// `private_key_jwt`'s key: the PEM file read and parsed for its algorithm now, so a wrong
/// file is a start-up error, not a failing IdP.
fn client_key(p: &mut Problems, i: &IntrospectionFile) -> Option<ClientKey> {
    let algorithm = match i.private_key_alg.as_deref() {
        Some("RS256") => jsonwebtoken::Algorithm::RS256,
        Some("ES256") => jsonwebtoken::Algorithm::ES256,
        Some(other) => {
            p.add(
                "introspection.private_key_alg",
                format_args!("\"{other}\" is not RS256 or ES256"),
            );
            return None;
        }
        None => {
            p.add(
                "introspection.private_key_alg",
                "is required for private_key_jwt (RS256 or ES256)",
            );
            return None;
        }
    };
    let Some(path) = &i.private_key_file else {
        p.add(
            "introspection.private_key_file",
            "is required for private_key_jwt",
        );
        return None;
    };
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => {
            p.add(
                "introspection.private_key_file",
                format_args!("cannot read {path}: {e}"),
            );
            return None;
        }
    };
    let key = ClientKey {
        algorithm,
        kid: i.private_key_kid.clone(),
        pem,
    };
    if let Err(e) = key.encoding_key() {
        p.add(
            "introspection.private_key_file",
            format_args!("{path} is not a PEM private key for {algorithm:?}: {e}"),
        );
        return None;
    }
    Some(key)
}

fn introspection_section(
    p: &mut Problems,
    section: &Option<IntrospectionFile>,
    allow_insecure_http: bool,
) -> Option<IntrospectionConfig> {
    match section {
        None => {
            p.add("introspection", "is required");
            None
        }
        Some(i) => {
            p.unknown("introspection", &i.unknown);
            if let Some(e) = &i.endpoint {
                url(p, "introspection.endpoint", e, allow_insecure_http);
            }
            if let Some(b) = &i.batch_endpoint {
                url(p, "introspection.batch_endpoint", b, allow_insecure_http);
            }
            let method = i.auth_method.as_deref().unwrap_or(defaults::AUTH_METHOD);
            if i.client_id.as_deref().unwrap_or("").is_empty() && method != "none" {
                p.add("introspection.client_id", "is required");
            }
            match (i.client_secret.as_deref().unwrap_or(""), method) {
                ("", "private_key_jwt" | "none") => {}
                ("", _) => p.add("introspection.client_secret", "is required"),
                (_, "none") => p.add(
                    "introspection.client_secret",
                    "is not sent with auth_method: none (leave it out)",
                ),
                (secret, _) => {
                    if let Some(why) = weak_secret(secret).filter(|_| secret.len() >= 16) {
                        p.add("introspection.client_secret", why);
                    }
                }
            }
            let auth = match method {
                "client_secret_basic" => ClientAuth::Basic,
                "client_secret_post" => ClientAuth::Post,
                "none" => ClientAuth::None,
                "private_key_jwt" => client_key(p, i)
                    .map(ClientAuth::PrivateKeyJwt)
                    .unwrap_or(ClientAuth::Basic),
                other => {
                    p.add(
                        "introspection.auth_method",
                        format_args!(
                            "\"{other}\" is not client_secret_basic, client_secret_post, private_key_jwt or none"
                        ),
                    );
                    ClientAuth::Basic
                }
            };
            for (field, set) in [
                ("private_key_file", i.private_key_file.is_some()),
                ("private_key_alg", i.private_key_alg.is_some()),
                ("private_key_kid", i.private_key_kid.is_some()),
            ] {
                if set && method != "private_key_jwt" {
                    p.add(
                        &format!("introspection.{field}"),
                        "is only for auth_method: private_key_jwt",
                    );
                }
            }
            let timeout_ms = i.timeout_ms.unwrap_or(defaults::INTROSPECTION_TIMEOUT_MS);
            if timeout_ms == 0 || timeout_ms > 30_000 {
                p.add("introspection.timeout_ms", "must be between 1 and 30000");
            }
            Some(IntrospectionConfig {
                endpoint: i.endpoint.clone(),
                batch_endpoint: i.batch_endpoint.clone(),
                client_id: i.client_id.clone().unwrap_or_default(),
                client_secret: i.client_secret.clone().unwrap_or_default(),
                auth,
                timeout: Duration::from_millis(timeout_ms),
                max_idle_connections: i
                    .max_idle_connections
                    .unwrap_or(defaults::MAX_IDLE_CONNECTIONS),
                max_calls_per_second: i
                    .max_calls_per_second
                    .unwrap_or(defaults::MAX_CALLS_PER_SECOND),
            })
        }
    }
}

/// `cache`: the introspection result cache.
fn cache_section(p: &mut Problems, c: &CacheFile) -> CacheConfig {
    p.unknown("cache", &c.unknown);
    let fraction = c
        .refresh_ahead_fraction
        .unwrap_or(defaults::REFRESH_AHEAD_FRACTION);
    if !(0.0..=1.0).contains(&fraction) {
        p.add("cache.refresh_ahead_fraction", "must be between 0 and 1");
    }
    let cache = CacheConfig {
        max_entries: c.max_entries.unwrap_or(defaults::CACHE_MAX_ENTRIES),
        cap_ms: c.cap_seconds.unwrap_or(defaults::CACHE_CAP_SECONDS) * 1000,
        inactive_ttl_ms: c
            .inactive_ttl_seconds
            .unwrap_or(defaults::INACTIVE_TTL_SECONDS)
            * 1000,
        refresh_ahead_fraction: fraction,
    };
    if cache.max_entries == 0 {
        p.add("cache.max_entries", "must be at least 1");
    }
    cache
}

/// `batching`: concurrent misses as one IdP call.
fn batching_section(p: &mut Problems, b: &BatchingFile) -> BatchingConfig {
    p.unknown("batching", &b.unknown);
    let window_ms = b.window_ms.unwrap_or(defaults::BATCH_WINDOW_MS);
    if window_ms > 50 {
        p.add(
            "batching.window_ms",
            "must be at most 50 (it adds latency to cache misses)",
        );
    }
    let max_batch = b.max_batch.unwrap_or(defaults::MAX_BATCH);
    if max_batch == 0 || max_batch > 1000 {
        p.add("batching.max_batch", "must be between 1 and 1000");
    }
    BatchingConfig {
        window: Duration::from_millis(window_ms),
        max_batch,
    }
}

/// `tiers`: each tier's freshness, grace and step-up, over its defaults.
fn tiers_section(
    p: &mut Problems,
    section: &BTreeMap<String, TierFile>,
) -> BTreeMap<Tier, TierRules> {
    let mut tiers: BTreeMap<Tier, TierRules> = Tier::ALL
        .iter()
        .map(|t| (*t, TierRules::default_for(*t)))
        .collect();
    for (name, t) in section {
        let at = format!("tiers.{name}");
        let tier = match name.parse::<Tier>() {
            Ok(tier) => tier,
            Err(unknown) => {
                p.add(&at, unknown);
                continue;
            }
        };
        p.unknown(&at, &t.unknown);
        let rules = tiers
            .entry(tier)
            .or_insert_with(|| TierRules::default_for(tier));
        if let Some(ms) = t.max_staleness_ms {
            rules.max_staleness_ms = ms;
        }
        if let Some(ms) = t.stale_if_error_ms {
            if tier.requires_server() && ms > 0 {
                p.add(
                    &at,
                    "privileged and regulated tiers fail closed: stale_if_error_ms must be 0",
                );
            }
            rules.stale_if_error_ms = ms;
        }
        if let Some(s) = &t.step_up {
            p.unknown(&format!("{at}.step_up"), &s.unknown);
            if s.max_auth_age_seconds.is_none() && s.acr_values.is_empty() {
                p.add(
                    &format!("{at}.step_up"),
                    "needs max_auth_age_seconds or acr_values",
                );
            }
            let applies_to = match s.applies_to.as_deref() {
                None | Some("user_tokens") => StepUpAppliesTo::UserTokens,
                Some("all_tokens") => StepUpAppliesTo::AllTokens,
                Some(other) => {
                    p.add(
                        &format!("{at}.step_up.applies_to"),
                        format_args!("\"{other}\" is not user_tokens or all_tokens"),
                    );
                    StepUpAppliesTo::UserTokens
                }
            };
            rules.step_up = Some(StepUp {
                max_auth_age_seconds: s.max_auth_age_seconds,
                acr_values: s.acr_values.clone(),
                applies_to,
            });
        }
    }
    tiers
}

/// `rate_limits`: per subject, per address, failed tokens per address.
fn rate_limits_section(p: &mut Problems, r: &RateLimitsFile) -> RateLimits {
    p.unknown("rate_limits", &r.unknown);
    RateLimits {
        privileged_per_subject: rate(
            p,
            "rate_limits.privileged_per_subject",
            &r.privileged_per_subject,
        ),
        privileged_per_address: rate(
            p,
            "rate_limits.privileged_per_address",
            &r.privileged_per_address,
        ),
        failed_tokens_per_address: rate(
            p,
            "rate_limits.failed_tokens_per_address",
            &r.failed_tokens_per_address,
        ),
    }
}

/// `policy`: the filter's route rules.
fn policy_section(p: &mut Problems, section: &Option<PolicyFile>) -> Option<RouteTable> {
    if let Some(policy) = section {
        p.unknown("policy", &policy.unknown);
    }
    match section {
        None => {
            p.add(
                "policy",
                "is required (routes and a default, as in the filter)",
            );
            None
        }
        Some(policy) => match route_table_from_config(&policy.routes, &policy.default) {
            Ok(table) => Some(table),
            Err(problems) => {
                for problem in problems {
                    p.0.push(format!("policy.{problem}"));
                }
                None
            }
        },
    }
}

/// `context:`: the settings, and the key ring from the seed (read at load).
fn context_section(
    p: &mut Problems,
    c: &authz_core::context::ContextConfig,
) -> Option<crate::context_keys::ContextKeyRing> {
    let settings = c.settings(
        "context",
        &authz_core::config::context_header_taken(),
        &mut p.0,
    )?;
    let rotate_every_seconds = c
        .rotate_every_seconds
        .unwrap_or(authz_core::context::defaults::ROTATE_EVERY_SECONDS);
    if !(2..=86_400).contains(&rotate_every_seconds) {
        p.add(
            "context.rotate_every_seconds",
            format_args!("{rotate_every_seconds} is outside 2–86400"),
        );
    }
    let path = match (&c.signing_seed, c.signing_seed_file.as_deref()) {
        (Some(seed), None) => {
            if seed.len() < crate::context_keys::MIN_SEED_BYTES {
                p.add(
                    "context.signing_seed",
                    "at least 32 characters (or signing_seed_file with 32 random bytes)",
                );
            } else if let Some(why) = authz_core::config::weak_secret(seed) {
                p.add("context.signing_seed", why);
            }
            return Some(crate::context_keys::ContextKeyRing::new(
                settings,
                seed.as_bytes().to_vec(),
                rotate_every_seconds,
            ));
        }
        (None, Some(path)) => path,
        (Some(_), Some(_)) => {
            p.add("context", "signing_seed or signing_seed_file, not both");
            return None;
        }
        (None, None) => {
            p.add(
                "context",
                "\"signing_seed_file\" (at least 32 random bytes; e.g. `head -c 32 /dev/urandom > seed`) or \"signing_seed\" is required",
            );
            return None;
        }
    };
    let seed = match std::fs::read(path) {
        Ok(seed) if seed.len() >= crate::context_keys::MIN_SEED_BYTES => seed,
        Ok(seed) => {
            p.add(
                "context.signing_seed_file",
                format_args!("{path} holds {} bytes; at least 32 are needed", seed.len()),
            );
            return None;
        }
        Err(e) => {
            p.add(
                "context.signing_seed_file",
                format_args!("cannot read {path}: {e}"),
            );
            return None;
        }
    };
    Some(crate::context_keys::ContextKeyRing::new(
        settings,
        seed,
        rotate_every_seconds,
    ))
}

/// `strip_headers`: the standard context headers plus these (and the method-override headers
/// when `requests` strips them), removed from allowed requests.
fn strip_headers_section(
    p: &mut Problems,
    extra: &Option<Vec<String>>,
    requests: &authz_core::target::RequestRules,
) -> Vec<String> {
    let overrides = authz_core::target::METHOD_OVERRIDE_HEADERS
        .iter()
        .filter(|h| requests.strips(h.as_bytes()));
    let mut strip_headers: Vec<String> = DEFAULT_STRIP_HEADERS
        .iter()
        .chain(overrides)
        .map(|h| (*h).to_owned())
        .collect();
    for name in extra.iter().flatten() {
        if !strip_headers.contains(name) {
            strip_headers.push(name.clone());
        }
    }
    for (i, name) in strip_headers.iter().enumerate() {
        if name.is_empty()
            || name.starts_with(':')
            || name.bytes().any(|b| b.is_ascii_uppercase() || b == b' ')
            || name == "authorization"
            || name == "host"
        {
            p.add(
                &format!("strip_headers[{i}]"),
                format_args!("\"{name}\" is not a strippable lower-case header name"),
            );
        }
    }
    strip_headers
}

mod redis_nodes;

fn redis_section(p: &mut Problems, r: &RedisFile) -> RedisConfig {
    p.unknown("redis", &r.unknown);
    let url = r.url.clone().unwrap_or_default();
    let sentinel = r
        .sentinel
        .as_ref()
        .map(|s| redis_nodes::sentinel_section(p, s));
    let cluster = r
        .cluster
        .as_ref()
        .map(|c| redis_nodes::cluster_section(p, c));
    redis_nodes::one_mode(p, &url, sentinel.is_some(), cluster.is_some());
    let min_replicas = r.min_replicas.unwrap_or(defaults::REDIS_MIN_REPLICAS);
    if min_replicas > 10 {
        p.add("redis.min_replicas", "must be between 0 and 10");
    }
    let replica_wait_ms = r.replica_wait_ms.unwrap_or(defaults::REDIS_REPLICA_WAIT_MS);
    if replica_wait_ms == 0 || replica_wait_ms > 5_000 {
        p.add("redis.replica_wait_ms", "must be between 1 and 5000");
    }
    let secret = r.secret.clone().unwrap_or_default();
    if secret.len() < 32 {
        p.add(
            "redis.secret",
            "is required and must be at least 32 characters (it keys and encrypts shared entries)",
        );
    } else if let Some(why) = weak_secret(&secret) {
        p.add("redis.secret", why);
    }
    let op_timeout_ms = r.op_timeout_ms.unwrap_or(defaults::REDIS_OP_TIMEOUT_MS);
    if op_timeout_ms == 0 || op_timeout_ms > 5_000 {
        p.add("redis.op_timeout_ms", "must be between 1 and 5000");
    }
    let block_ms = r.block_ms.unwrap_or(defaults::REDIS_BLOCK_MS);
    if !(10..=5_000).contains(&block_ms) {
        p.add("redis.block_ms", "must be between 10 and 5000");
    }
    let max_unconfirmed_ms = r
        .max_unconfirmed_ms
        .unwrap_or(defaults::REDIS_MAX_UNCONFIRMED_MS);
    if max_unconfirmed_ms <= block_ms {
        p.add(
            "redis.max_unconfirmed_ms",
            format_args!("must be above block_ms ({block_ms})"),
        );
    }
    let stream_max_len = r.stream_max_len.unwrap_or(defaults::REDIS_STREAM_MAX_LEN);
    if stream_max_len < 1_000 {
        p.add("redis.stream_max_len", "must be at least 1000");
    }
    let key_prefix = r
        .key_prefix
        .clone()
        .unwrap_or_else(|| defaults::REDIS_KEY_PREFIX.into());
    if key_prefix.is_empty() || key_prefix.contains(char::is_whitespace) {
        p.add("redis.key_prefix", "must be non-empty without spaces");
    } else if cluster.is_some() && key_prefix.contains(['{', '}']) {
        p.add(
            "redis.key_prefix",
            "must not contain { or } with cluster (the server puts it in a hash tag)",
        );
    }
    let tls = url.starts_with("rediss://");
    let mode = match (&sentinel, &cluster) {
        (Some(_), _) => Some("sentinel"),
        (None, Some(_)) => Some("cluster"),
        (None, None) => None,
    };
    let mut read_pem = |field: &str, path: &Option<String>| -> Option<Vec<u8>> {
        let path = path.as_ref()?;
        if let Some(mode) = mode {
            p.add(
                &format!("redis.{field}"),
                format_args!(
                    "TLS with {mode} is not supported yet (nodes are reached over plain TCP)"
                ),
            );
            return None;
        }
        if !tls {
            p.add(&format!("redis.{field}"), "only applies to rediss:// URLs");
            return None;
        }
        match std::fs::read(path) {
            Ok(bytes) if bytes.windows(5).any(|w| w == b"-----") => Some(bytes),
            Ok(_) => {
                p.add(&format!("redis.{field}"), format_args!("{path} is not PEM"));
                None
            }
            Err(e) => {
                p.add(
                    &format!("redis.{field}"),
                    format_args!("cannot read {path}: {e}"),
                );
                None
            }
        }
    };
    let tls_ca = read_pem("ca_file", &r.ca_file);
    let cert = read_pem("client_cert_file", &r.client_cert_file);
    let key = read_pem("client_key_file", &r.client_key_file);
    let tls_client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            p.add("redis", "client_cert_file and client_key_file go together");
            None
        }
    };
    RedisConfig {
        url,
        tls_ca,
        tls_client,
        secret,
        key_prefix,
        op_timeout: Duration::from_millis(op_timeout_ms),
        block: Duration::from_millis(block_ms),
        max_unconfirmed_ms,
        stream_max_len,
        shared_cache: r.shared_cache.unwrap_or(defaults::REDIS_SHARED_CACHE),
        sentinel,
        cluster,
        min_replicas,
        replica_wait: Duration::from_millis(replica_wait_ms),
    }
}

impl ServerConfig {
    /// Reads and validates a YAML file.
    pub fn load(path: &str) -> Result<ServerConfig, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        ServerConfig::from_yaml(&text)
    }

    /// Parses and validates YAML text, with `${NAME}` references taken from the process
    /// environment.
    pub fn from_yaml(text: &str) -> Result<ServerConfig, ServerError> {
        ServerConfig::from_yaml_with_env(text, |name| std::env::var(name).ok())
    }

    /// [`ServerConfig::from_yaml`] with the environment given as a lookup (tests, tools).
    /// In every string value, each `${NAME}` (NAME: upper-case letters, digits, `_`) is
    /// replaced by its value, so secrets can come from the environment (e.g. a Kubernetes
    /// Secret) instead of the file. Expansion happens after parsing, so a value can never
    /// add keys or change the document's structure. An unset variable is a problem reported
    /// with all the others.
    pub fn from_yaml_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServerConfig, ServerError> {
        let not_yaml = |e: serde_yaml::Error| {
            ServerError::InvalidConfig(vec![format!("not a valid configuration document: {e}")])
        };
        let mut document: serde_yaml::Value = serde_yaml::from_str(text).map_err(not_yaml)?;
        let mut unset = Vec::new();
        expand_values(&mut document, &env, &mut unset);
        let unset: Vec<String> = unset
            .iter()
            .map(|name| {
                format!(
                    "config: environment variable {name} is not set (referenced as ${{{name}}})"
                )
            })
            .collect();
        let file: ServerConfigFile = serde_yaml::from_value(document).map_err(not_yaml)?;
        match ServerConfig::validate(&file) {
            Ok(config) if unset.is_empty() => Ok(config),
            Ok(_) => Err(ServerError::InvalidConfig(unset)),
            Err(ServerError::InvalidConfig(problems)) => Err(ServerError::InvalidConfig(
                unset.into_iter().chain(problems).collect(),
            )),
            Err(other) => Err(other),
        }
    }

    /// Validates a parsed file, naming every problem.
    pub fn validate(f: &ServerConfigFile) -> Result<ServerConfig, ServerError> {
        let mut p = Problems(Vec::new());
        p.unknown("config", &f.unknown);
        let listen = addr(&mut p, "listen", &f.listen, defaults::LISTEN);
        let admin_listen = addr(
            &mut p,
            "admin_listen",
            &f.admin_listen,
            defaults::ADMIN_LISTEN,
        );
        let admin_token = f.admin_token.clone().unwrap_or_default();
        if let Some(why) = weak_secret(&admin_token) {
            p.add("admin_token", format_args!("is required and {why}"));
        }
        let epochs_tokens: Vec<String> = f
            .epochs_token
            .iter()
            .chain(&f.epochs_tokens)
            .cloned()
            .collect();
        for (i, token) in epochs_tokens.iter().enumerate() {
            let at = match (i, f.epochs_token.is_some()) {
                (0, true) => "epochs_token".to_owned(),
                (i, true) => format!("epochs_tokens[{}]", i - 1),
                (i, false) => format!("epochs_tokens[{i}]"),
            };
            if let Some(why) = weak_secret(token) {
                p.add(&at, why);
            }
            if *token == admin_token {
                p.add(&at, "must differ from admin_token");
            }
            if epochs_tokens.iter().take(i).any(|t| t == token) {
                p.add(&at, "is listed twice");
            }
        }
        p.unknown("feed", &f.feed.unknown);
        let feed_max_held = f.feed.max_held.unwrap_or(defaults::FEED_MAX_HELD);
        let feed_max_held_per_token = f
            .feed
            .max_held_per_token
            .unwrap_or(defaults::FEED_MAX_HELD_PER_TOKEN);
        if feed_max_held_per_token > feed_max_held {
            p.add("feed.max_held_per_token", "must not exceed feed.max_held");
        }
        let feed_page_rows = f.feed.page_rows.unwrap_or(crate::versions::FEED_PAGE_ROWS);
        if !(100..=1_000_000).contains(&feed_page_rows) {
            p.add("feed.page_rows", "must be between 100 and 1000000");
        }
        let feed_catch_up_bytes_per_second = f
            .feed
            .catch_up_bytes_per_second
            .unwrap_or(defaults::FEED_CATCH_UP_BYTES_PER_SECOND);
        if !(65_536..=10 << 30).contains(&feed_catch_up_bytes_per_second) {
            p.add(
                "feed.catch_up_bytes_per_second",
                "must be between 65536 and 10737418240",
            );
        }
        let allow_insecure_http = f.allow_insecure_http.unwrap_or(false);
        let otlp = f.otlp.as_ref().and_then(|o| {
            o.settings(&mut p.0, |endpoint| {
                let mut checked = Problems(Vec::new());
                url(&mut checked, "", endpoint, allow_insecure_http);
                checked
                    .0
                    .first()
                    .map(|problem| problem.trim_start_matches(": ").to_owned())
            })
        });
        let idp_ca_pem = f
            .idp_ca_file
            .as_deref()
            .and_then(|path| match std::fs::read(path) {
                Ok(pem)
                    if reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()) =>
                {
                    Some(pem)
                }
                Ok(_) => {
                    p.add(
                        "idp_ca_file",
                        format_args!("{path} holds no PEM certificate"),
                    );
                    None
                }
                Err(e) => {
                    p.add("idp_ca_file", format_args!("cannot read {path}: {e}"));
                    None
                }
            });
        let introspection = introspection_section(&mut p, &f.introspection, allow_insecure_http);
        let endpoint_given = f
            .introspection
            .as_ref()
            .is_some_and(|i| i.endpoint.is_some());
        let token = token_section(&mut p, &f.token, endpoint_given, allow_insecure_http);
        let cache = cache_section(&mut p, &f.cache);
        let batching = batching_section(&mut p, &f.batching);
        p.unknown("circuit_breaker", &f.circuit_breaker.unknown);
        let tiers = tiers_section(&mut p, &f.tiers);
        let rate_limits = rate_limits_section(&mut p, &f.rate_limits);
        let routes = policy_section(&mut p, &f.policy);
        let realm = f.realm.clone().unwrap_or_else(|| defaults::REALM.into());
        let requests = f.requests.unwrap_or_default();
        let mut strip_headers = strip_headers_section(&mut p, &f.strip_headers, &requests);
        let context = f.context.as_ref().and_then(|c| context_section(&mut p, c));
        if let Some(ring) = &context {
            if !strip_headers.contains(&ring.settings.header) {
                strip_headers.push(ring.settings.header.clone());
            }
        }
        let redis = f.redis.as_ref().map(|r| redis_section(&mut p, r));
        let status_lists = f.status_lists.as_ref().map(|c| {
            c.settings(
                "status_lists",
                |uri| allow_insecure_http || loopback_url(uri),
                &mut p.0,
            )
        });
        let batch = match (&f.resources, &f.batch_token) {
            (None, None) => None,
            (None, Some(_)) => {
                p.add("batch_token", "is for the batch API: set resources too");
                None
            }
            (Some(resources), token) => {
                let token = token.clone().unwrap_or_default();
                if let Some(why) = weak_secret(&token) {
                    p.add(
                        "batch_token",
                        format_args!("is required with resources and {why}"),
                    );
                }
                if token == admin_token || epochs_tokens.contains(&token) {
                    p.add(
                        "batch_token",
                        "must differ from admin_token and the feed secrets",
                    );
                }
                Some(BatchSettings {
                    rules: resources.settings("resources", &mut p.0),
                    token,
                })
            }
        };
        if let (Some(_), Some((_, _, _, idp))) = (&status_lists, &token) {
            if !idp.discovery && idp.jwks_uri.is_none() {
                p.add(
                    "status_lists",
                    "needs the provider's keys to verify the lists with (token.jwks_uri, or token.discovery: true)",
                );
            }
        }
        if !p.0.is_empty() {
            return Err(ServerError::InvalidConfig(p.0));
        }
        let (
            Some(introspection),
            Some(routes),
            Some((token, require_audience, max_token_bytes, idp)),
        ) = (introspection, routes, token)
        else {
            return Err(ServerError::InvalidConfig(
                vec!["config: incomplete".into()],
            ));
        };
        Ok(ServerConfig {
            listen,
            admin_listen,
            admin_token,
            epochs_tokens,
            feed_max_held,
            feed_max_held_per_token,
            feed_page_rows,
            feed_catch_up_bytes_per_second,
            region: f.region.clone().unwrap_or_else(|| defaults::REGION.into()),
            zone: f.zone.clone().unwrap_or_else(|| defaults::ZONE.into()),
            realm,
            check_timeout: Duration::from_millis(
                f.check_timeout_ms.unwrap_or(defaults::CHECK_TIMEOUT_MS),
            ),
            drain: Duration::from_millis(f.drain_ms.unwrap_or(defaults::DRAIN_MS)),
            introspection,
            token,
            idp,
            require_audience,
            max_token_bytes,
            cache,
            batching,
            circuit_failure_threshold: f
                .circuit_breaker
                .failure_threshold
                .unwrap_or(defaults::CIRCUIT_FAILURE_THRESHOLD),
            circuit_open_ms: f
                .circuit_breaker
                .open_ms
                .unwrap_or(defaults::CIRCUIT_OPEN_MS),
            tiers,
            rate_limits,
            routes,
            strip_headers,
            forward_token: f.forward_token.unwrap_or(defaults::FORWARD_TOKEN),
            requests,
            idp_ca_pem,
            context,
            allow_insecure_http,
            redis,
            status_lists,
            batch,
            switches_file: f.switches_file.as_ref().map(std::path::PathBuf::from),
            otlp,
        })
    }

    /// The longest time any tier could use a cached result (freshness plus stale grace).
    pub fn longest_window_ms(&self) -> u64 {
        self.tiers
            .values()
            .map(|r| r.max_staleness_ms + r.stale_if_error_ms)
            .max()
            .unwrap_or(0)
    }

    pub fn tier_rules(&self, tier: Tier) -> TierRules {
        self.tiers
            .get(&tier)
            .cloned()
            .unwrap_or_else(|| TierRules::default_for(tier))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
admin_token: "0123456789abcdef-admin"
introspection:
  endpoint: http://127.0.0.1:9000/introspect
  batch_endpoint: http://127.0.0.1:9000/introspect/batch
  client_id: authz-server
  client_secret: authz-server-secret
token: {issuer: "https://idp.example", audiences: [demo-api]}
tiers:
  privileged:
    max_staleness_ms: 2000
    step_up: {max_auth_age_seconds: 300}
rate_limits:
  privileged_per_subject: {per_second: 5, burst: 5}
policy:
  routes:
    - {name: admin, match: {prefix: /admin/}, tier: privileged, require: {scopes: [admin]}}
  default: {tier: authenticated}
"#;

    #[test]
    fn the_example_loads_with_defaults() {
        let c = ServerConfig::from_yaml(EXAMPLE).unwrap();
        assert_eq!(c.tier_rules(Tier::Privileged).max_staleness_ms, 2000);
        assert!(c.tier_rules(Tier::Privileged).step_up.is_some());
        assert_eq!(c.tier_rules(Tier::Authenticated).stale_if_error_ms, 300_000);
        assert_eq!(c.batching.window, Duration::from_millis(2));
        assert_eq!(c.introspection.auth, ClientAuth::Basic);
        assert_eq!(
            c.rate_limits.privileged_per_subject,
            Some(Rate {
                per_period: 5,
                period: Duration::from_secs(1),
                burst: 5
            })
        );
        assert_eq!(c.routes.find("GET", "/admin/x").tier, Tier::Privileged);
    }

    #[test]
    fn environment_references_are_expanded_and_unset_ones_reported() {
        let env =
            |name: &str| (name == "ADMIN_SECRET").then(|| "from-the-environment-1234".to_owned());
        let (text, unset) = expand_env(
            "a: ${ADMIN_SECRET}\nb: ${MISSING_1}\nc: ${lower} $HOME ${",
            &env,
        );
        assert_eq!(
            text,
            "a: from-the-environment-1234\nb: \nc: ${lower} $HOME ${"
        );
        assert_eq!(unset, vec!["MISSING_1"]);
        let yaml = EXAMPLE.replace("\"0123456789abcdef-admin\"", "\"${ADMIN_SECRET}\"");
        let c = ServerConfig::from_yaml_with_env(&yaml, env).unwrap();
        assert_eq!(c.admin_token, "from-the-environment-1234");
        let Err(ServerError::InvalidConfig(problems)) =
            ServerConfig::from_yaml_with_env(&yaml, |_| None)
        else {
            panic!("accepted without the variable")
        };
        assert!(
            problems[0].contains("ADMIN_SECRET is not set"),
            "{problems:?}"
        );
        let injected = |_: &str| Some("x\"\nintrospection: {}\n".to_owned());
        let c = ServerConfig::from_yaml_with_env(&yaml, injected);
        assert!(
            matches!(&c, Ok(c) if c.admin_token.starts_with("x\"\nintrospection")),
            "a value is a value: it cannot restructure the document"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("admin_token:")),
            "the other problems are still reported: {problems:?}"
        );
    }

    #[test]
    fn a_redis_section_loads_with_defaults() {
        let text = format!(
            "{EXAMPLE}zone: zone-a\nredis: {{url: \"redis://127.0.0.1:6379/0\", secret: \"{}\"}}\n",
            "s".repeat(32)
        );
        let c = ServerConfig::from_yaml(&text).unwrap();
        let r = c.redis.unwrap();
        assert_eq!(r.key_prefix, "authz:v1:");
        assert_eq!(
            (r.max_unconfirmed_ms, r.block),
            (1_500, Duration::from_millis(500))
        );
        assert!(r.shared_cache);
        assert_eq!(c.zone, "zone-a");
    }

    #[test]
    fn provider_discovery_keys_and_client_auth_problems_are_named() {
        // Issuer alone: discovery is on, and JWTs are verified against the discovered keys.
        let by_issuer = EXAMPLE.replace("  endpoint: http://127.0.0.1:9000/introspect\n", "");
        let c = ServerConfig::from_yaml(&by_issuer).unwrap();
        assert!(c.idp.discovery);
        assert_eq!(c.introspection.endpoint, None);
        assert_eq!(c.idp.jwt_access_tokens, JwtAccessTokens::Verify);
        // An explicit introspection endpoint combines with discovery (for the keys).
        assert!(ServerConfig::from_yaml(EXAMPLE).unwrap().idp.discovery);
        let opted_out = EXAMPLE.replace(
            "audiences: [demo-api]}",
            "audiences: [demo-api], discovery: false}",
        );
        assert!(!ServerConfig::from_yaml(&opted_out).unwrap().idp.discovery);

        let bad = by_issuer
            .replace(
                "token: {issuer: \"https://idp.example\", audiences: [demo-api]}",
                "token: {issuer: \"idp\", audiences: [demo-api], discovery: false, jwks_uri: \"ftp://k\", jwt_access_tokens: maybe}",
            )
            .replace(
                "  client_secret: authz-server-secret\n",
                "  auth_method: private_key_jwt\n  private_key_file: /nonexistent/key.pem\n  private_key_alg: HS256\n",
            )
            .replace(
                "{name: admin, match: {prefix: /admin/}, tier: privileged, require: {scopes: [admin]}}",
                "{name: admin, match: {prefix: /admin/}, tier: authenticated, require: {introspect: true}}",
            );
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&bad) else {
            panic!("accepted")
        };
        for expected in [
            "introspection.endpoint: is required unless token.discovery finds it",
            "token.jwks_uri: \"ftp://k\" is not an http(s) url",
            "token.jwt_access_tokens: \"maybe\" is not verify or introspect",
            "introspection.private_key_alg: \"HS256\" is not RS256 or ES256",
            "policy.routes[0].require.introspect: needs a server-decided tier",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:#?}"
            );
        }
        assert!(
            !problems.iter().any(|p| p.contains("client_secret")),
            "private_key_jwt needs no secret: {problems:#?}"
        );
        let unreadable = bad.replace("HS256", "RS256");
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&unreadable) else {
            panic!("accepted")
        };
        assert!(
            problems.iter().any(|p| p
                .starts_with("introspection.private_key_file: cannot read /nonexistent/key.pem")),
            "{problems:#?}"
        );
    }

    #[test]
    fn plaintext_idp_urls_are_refused_unless_loopback_or_allowed_and_a_ca_file_must_hold_a_certificate(
    ) {
        let remote = EXAMPLE
            .replace("http://127.0.0.1:9000/introspect\n", "http://idp.internal/introspect\n")
            .replace(
                "http://127.0.0.1:9000/introspect/batch",
                "http://idp.internal/introspect/batch",
            )
            .replace(
                "token: {issuer: \"https://idp.example\", audiences: [demo-api]}",
                "token: {issuer: \"https://idp.example\", audiences: [demo-api], jwks_uri: \"http://10.0.0.7/keys\"}",
            );
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&remote) else {
            panic!("accepted")
        };
        for key in [
            "introspection.endpoint",
            "introspection.batch_endpoint",
            "token.jwks_uri",
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(key) && p.contains("plaintext http")),
                "missing {key} in {problems:#?}"
            );
        }
        let allowed = format!("{remote}allow_insecure_http: true\n");
        assert!(
            ServerConfig::from_yaml(&allowed)
                .unwrap()
                .allow_insecure_http
        );
        // Loopback (the dev stack, a sidecar) and https pass.
        for url in [
            "http://127.0.0.1:9000/x",
            "http://localhost/x",
            "http://[::1]:80/x",
        ] {
            assert!(loopback_url(url), "{url}");
        }
        for url in [
            "http://127.0.0.1.evil/x",
            "http://10.0.0.7/x",
            "http://[::2]/x",
            "http://localhost:1@idp.internal/x",
        ] {
            assert!(!loopback_url(url), "{url}");
        }
        let by_issuer = EXAMPLE
            .replace("  endpoint: http://127.0.0.1:9000/introspect\n", "")
            .replace("https://idp.example", "http://idp.example");
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&by_issuer) else {
            panic!("a plaintext issuer to discover from was accepted")
        };
        assert!(
            problems.iter().any(|p| p.starts_with("token.issuer")),
            "{problems:#?}"
        );
        let no_ca = format!("{EXAMPLE}idp_ca_file: /nonexistent/ca.pem\n");
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&no_ca) else {
            panic!("accepted")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("idp_ca_file: cannot read /nonexistent/ca.pem")),
            "{problems:#?}"
        );
    }

    #[test]
    fn introspection_without_client_authentication_needs_no_id_or_secret_and_refuses_one() {
        let none = EXAMPLE.replace("  client_id: authz-server\n", "").replace(
            "  client_secret: authz-server-secret\n",
            "  auth_method: none\n",
        );
        let c = ServerConfig::from_yaml(&none).unwrap();
        assert_eq!(c.introspection.auth, ClientAuth::None);
        let with_secret = none.replace(
            "  auth_method: none\n",
            "  auth_method: none\n  client_secret: a-secret-not-sent-0123\n",
        );
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&with_secret)
        else {
            panic!("accepted")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("introspection.client_secret: is not sent")),
            "{problems:#?}"
        );
    }

    #[test]
    fn every_problem_is_named() {
        let bad = r#"
listen: nowhere
admin_token: short
introspection:
  endpoint: ftp://x
  auth_method: magic
  timeout_ms: 0
batching: {window_ms: 500}
tiers:
  privileged: {stale_if_error_ms: 1000}
  gold: {}
rate_limits:
  privileged_per_subject: {per_second: 1, per_minute: 1}
policy:
  defaults: {}
  routes:
    - {match: {prefix: /a}, tier: platinum}
colour: blue
"#;
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(bad) else {
            panic!("accepted")
        };
        for expected in [
            "config: unknown field \"colour\"",
            "listen: \"nowhere\" is not an ip:port address",
            "admin_token: is required",
            "introspection.endpoint: \"ftp://x\" is not an http(s) url",
            "introspection.client_id: is required",
            "introspection.client_secret: is required",
            "introspection.auth_method: \"magic\"",
            "introspection.timeout_ms: must be between",
            "batching.window_ms: must be at most 50",
            "tiers.privileged: privileged and regulated tiers fail closed",
            "tiers.gold: unknown tier",
            "rate_limits.privileged_per_subject: exactly one of",
            "policy.routes[0]: unknown tier \"platinum\"",
            "policy.default: an explicit default route",
            "policy: unknown field \"defaults\"",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:#?}"
            );
        }
    }

    #[test]
    fn a_maximum_token_lifetime_is_in_range_and_bounds_the_provider() {
        let with = |seconds: u64| {
            EXAMPLE.replace(
                "audiences: [demo-api]}",
                &format!("audiences: [demo-api], max_lifetime_seconds: {seconds}}}"),
            )
        };
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&with(5)) else {
            panic!("accepted")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("token.max_lifetime_seconds: must be between 60")),
            "{problems:#?}"
        );
        let config = ServerConfig::from_yaml(&with(3_600)).unwrap();
        assert_eq!(config.token.max_lifetime_seconds, Some(3_600));
    }

    #[test]
    fn unsafe_secrets_tls_files_and_missing_token_rules_are_named() {
        let bad = EXAMPLE
            .replace("\"0123456789abcdef-admin\"", "dev-admin-token-change-me")
            .replace("token: {issuer: \"https://idp.example\", audiences: [demo-api]}\n", "")
            + "epochs_token: \"an-example-token-0123456789\"\n"
            + "redis: {url: \"redis://h:6379/0\", secret: \"0123456789abcdef0123456789abcdef\", ca_file: /nonexistent.pem}\n";
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&bad) else {
            panic!("accepted")
        };
        for expected in [
            "admin_token: is required and is a placeholder",
            "epochs_token: is a placeholder",
            "token: is required",
            "redis.ca_file: only applies to rediss:// URLs",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:#?}"
            );
        }
        let unreadable = format!(
            "{EXAMPLE}redis: {{url: \"rediss://h:6379/0\", secret: \"0123456789abcdef0123456789abcdef\", ca_file: /nonexistent.pem, client_cert_file: /x.pem}}\n"
        );
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&unreadable) else {
            panic!("accepted")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("redis.ca_file: cannot read")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("redis.client_cert_file: cannot read")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_cluster_section_loads_and_its_problems_are_named() {
        let secret = "s".repeat(32);
        let text = format!(
            "{EXAMPLE}redis: {{cluster: {{addresses: [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"], password: pw}}, min_replicas: 1, secret: \"{secret}\"}}\n"
        );
        let r = ServerConfig::from_yaml(&text).unwrap().redis.unwrap();
        let cluster = r.cluster.unwrap();
        assert_eq!(cluster.addresses.len(), 2);
        assert_eq!(cluster.password.as_deref(), Some("pw"));
        assert!(r.sentinel.is_none() && r.url.is_empty());
        let bad = format!(
            "{EXAMPLE}redis: {{cluster: {{addresses: [\"rediss://h:6379\", \"h:6379\"], db: 1}}, sentinel: {{master_name: m, addresses: [\"redis://h:26379\"]}}, key_prefix: \"a{{b}}:\", ca_file: /x.pem, secret: \"{secret}\"}}\n"
        );
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&bad) else {
            panic!("accepted")
        };
        for expected in [
            "redis: url, sentinel and cluster are alternatives",
            "redis.cluster: unknown field \"db\"",
            "redis.cluster.addresses[0]: TLS to nodes is not supported",
            "redis.cluster.addresses[1]: \"h:6379\" is not redis://host:port",
            "redis.ca_file: TLS with sentinel is not supported",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:#?}"
            );
        }
        let braces = format!(
            "{EXAMPLE}redis: {{cluster: {{addresses: [\"redis://h:6379\"]}}, key_prefix: \"a{{b}}:\", ca_file: /x.pem, secret: \"{secret}\"}}\n"
        );
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&braces) else {
            panic!("accepted")
        };
        for expected in [
            "redis.key_prefix: must not contain { or } with cluster",
            "redis.ca_file: TLS with cluster is not supported",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:#?}"
            );
        }
        let empty = format!("{EXAMPLE}redis: {{cluster: {{}}, secret: \"{secret}\"}}\n");
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&empty) else {
            panic!("accepted")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("redis.cluster.addresses: needs at least one node")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_sentinel_section_loads_and_its_problems_are_named() {
        let secret = "s".repeat(32);
        let text = format!(
            "{EXAMPLE}redis: {{sentinel: {{master_name: authz, addresses: [\"redis://127.0.0.1:26379\", \"redis://10.0.0.2:26379\"], password: pw, db: 2}}, min_replicas: 1, secret: \"{secret}\"}}\n"
        );
        let r = ServerConfig::from_yaml(&text).unwrap().redis.unwrap();
        let sentinel = r.sentinel.unwrap();
        assert_eq!(
            (
                sentinel.master_name.as_str(),
                sentinel.addresses.len(),
                sentinel.db
            ),
            ("authz", 2, 2)
        );
        assert_eq!(sentinel.password.as_deref(), Some("pw"));
        assert_eq!(
            (r.min_replicas, r.replica_wait),
            (1, Duration::from_millis(200))
        );
        let bad = format!(
            "{EXAMPLE}redis: {{url: \"redis://h:6379/0\", sentinel: {{addresses: [\"rediss://h:26379\", \"h:26379\", \"redis://s:26379\", \"redis://s:26379/\"], db: 99, port: 1}}, min_replicas: 11, replica_wait_ms: 0, secret: \"{secret}\"}}\n"
        );
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&bad) else {
            panic!("accepted")
        };
        for expected in [
            "redis: url, sentinel and cluster are alternatives",
            "redis.sentinel: unknown field \"port\"",
            "redis.sentinel.master_name: is required",
            "redis.sentinel.addresses[0]: TLS to sentinels is not supported",
            "redis.sentinel.addresses[1]: \"h:26379\" is not redis://host:port",
            "redis.sentinel.db: must be between 0 and 15",
            "redis.sentinel.addresses[3]: s:26379 is listed twice",
            "redis.min_replicas: must be between 0 and 10",
            "redis.replica_wait_ms: must be between 1 and 5000",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:#?}"
            );
        }
        let empty =
            format!("{EXAMPLE}redis: {{sentinel: {{master_name: authz}}, secret: \"{secret}\"}}\n");
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&empty) else {
            panic!("accepted")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("redis.sentinel.addresses: needs at least one")),
            "{problems:#?}"
        );
    }

    #[test]
    fn redis_problems_are_named_with_the_rest() {
        let bad = format!(
            "{EXAMPLE}redis: {{url: \"http://x\", secret: short, block_ms: 800, max_unconfirmed_ms: 500, stream_max_len: 5, colour: red}}\n"
        );
        let Err(ServerError::InvalidConfig(problems)) = ServerConfig::from_yaml(&bad) else {
            panic!("accepted")
        };
        for expected in [
            "redis: unknown field \"colour\"",
            "redis.url: is required",
            "redis.secret: is required",
            "redis.max_unconfirmed_ms: must be above block_ms (800)",
            "redis.stream_max_len: must be at least 1000",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:#?}"
            );
        }
    }
}
