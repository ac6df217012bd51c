//! `envoy.service.auth.v3.Authorization/Check`: one decision per request, in phases (the order
//! Authorino made familiar), each a small function:
//!
//! 1. [`identify`]: what is asked: the route and tier (`context_extensions["tier"]`, else the
//!    route table on the canonical path) and the credential. An unreadable request stops here.
//! 2. [`CheckService::screen`]: the token before anyone is asked about it: bearer syntax, size
//!    (`token.max_bytes`), revocation by hash, per-address limits, and the shared-state gate
//!    of tiers that fail closed.
//! 3. The token's data: a JWT access token is verified against the provider's keys
//!    ([`CheckService::verify_jwt`], when `token.jwt_access_tokens` is `verify` and the route
//!    does not `require.introspect`); any other token is introspected
//!    ([`CheckService::introspect`]: cache, shared cache or IdP, by the tier's freshness rules).
//! 4. [`CheckService::authorize`]: active, what the token is for
//!    (`authz_core::verify::check_purpose`, the filter's rules), `jti` and subject revocation,
//!    the per-subject limit, the route's requirements (the filter's evaluation), step-up.
//! 5. [`CheckService::decide`] answers: the [`Verdict`] goes through `authz_core`'s one
//!    response table (so a client cannot tell which component answered or why a token failed),
//!    a failed token counts against its address, and one decision line is logged (the token
//!    never appears in it; a hash prefix does).
//!
//! `Check` never returns a gRPC error for a decision: malformed input is a deny, a missed
//! deadline is a fail-closed 503.

use crate::clock::SharedClock;
use crate::config::ServerConfig;
use crate::introspector::{Cached, Introspector, Lookup, Source};
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::reply::to_envoy;
use crate::shared::Shared;
use crate::versions::{TokenKey, Versions};
use authz_core::context::Decided;
use authz_core::decision::bearer_token;
use authz_core::ext_authz_proto::{
    Background, CacheDirective, BACKGROUND_EXTENSION, CLIENT_LOCALITY_EXTENSION,
};
use authz_core::fallback::{check_step_up, TierRules};
use authz_core::introspection::Introspection;
use authz_core::routes::{is_origin_form, match_path, Route, RouteTable};
use authz_core::target::is_method_override;
use authz_core::token_hash::{signed_part_digest, token_digest};
use authz_core::verify::{check_purpose, jws_typ, Presence};
use authz_core::{DenyReason, Tier, Verdict, VerifyFailure};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use envoy_types::ext_authz::v3::CheckRequestExt;
use std::sync::Arc;
use std::time::Instant;

/// Header names the server sets on allowed requests: the filter's default names, all in
/// `config::DEFAULT_STRIP_HEADERS`, so every one is also removed from clients' requests.
pub const SUBJECT_HEADER: &str = authz_core::config::defaults::SUBJECT_HEADER;
pub const SUBJECT_KIND_HEADER: &str = authz_core::config::defaults::SUBJECT_KIND_HEADER;
pub const SCOPES_HEADER: &str = authz_core::config::defaults::SCOPES_HEADER;
pub const TIER_HEADER: &str = authz_core::config::defaults::TIER_HEADER;
pub const POLICY_VERSION_HEADER: &str = authz_core::config::POLICY_VERSION_HEADER;

/// How long a caching client may reuse a denial (inactive, revoked, insufficient scope).
pub const DENY_CACHE_TTL_MS: u64 = 2_000;

/// Everything a check needs, shared by all requests.
pub struct CheckService {
    pub config: Arc<ServerConfig>,
    pub introspector: Arc<Introspector>,
    /// The provider's metadata and keys; verifies JWT access tokens.
    pub idp: Arc<crate::idp::Idp>,
    pub versions: Arc<Versions>,
    /// The shared tier (Redis), when configured.
    pub shared: Option<Arc<Shared>>,
    pub limiters: Arc<Limiters>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    /// Where the changes a check makes go (a background check's revocation).
    pub changes: Arc<dyn crate::changes::ChangeSink>,
    /// The Token Status Lists tokens may name, when configured.
    pub status_lists: Option<Arc<crate::status_lists::StatusLists>>,
    /// The route policy enforced (configured or promoted) and a candidate in dry-run.
    pub route_policies: Arc<crate::route_policies::RoutePolicies>,
    /// Where the spans of checks go, when `otlp` is configured.
    pub otlp: Option<Arc<crate::otlp::Exporter>>,
}

/// A stage a check went through: when it began and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct StageTime {
    pub name: &'static str,
    pub started: Instant,
    pub seconds: f64,
}

impl Trace {
    /// Records stage `name`, begun at `started`, as ending now.
    pub(crate) fn stage(&mut self, name: &'static str, started: Instant) {
        self.stages.push(StageTime {
            name,
            started,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
}

/// Facts of one check, gathered for the decision log.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// A background check (see [`Identified::background`]).
    pub(crate) background: bool,
    /// One made after the answer (see [`Identified::answered_already`]).
    pub(crate) answered_already: bool,
    /// A background check whose token this server verified itself (signature, issuer,
    /// audience, lifetime), the only case its refusal may revoke it: what a revocation of it
    /// names and its `exp`.
    pub(crate) background_verified: Option<(TokenKey, i64)>,
    /// The background check revoked the token (the reply says so).
    pub(crate) token_revoked: bool,
    pub(crate) tier: Option<Tier>,
    pub(crate) route: String,
    pub(crate) address: String,
    pub(crate) token_label: String,
    pub(crate) cache: &'static str,
    pub(crate) age_ms: u64,
    /// The token's principal (`sub`, else `client_id`: see `authz_core::principal`).
    pub(crate) subject: Option<String>,
    /// Keep the claims of an established token (a canary judges its candidate from them).
    pub(crate) keep_claims: bool,
    /// The claims of the token, once active, for this API and not revoked (`keep_claims`).
    pub(crate) established: Option<authz_core::Claims>,
    /// How long the introspection data behind this decision stays fresh enough for its tier
    /// (0 when stale or none).
    pub(crate) fresh_for_ms: u64,
    pub(crate) stages: Vec<StageTime>,
    /// The trace context Envoy passed (for the OTLP spans).
    pub(crate) parent: Option<authz_core::trace_context::Parent>,
    /// The trace the request belongs to, when one came in (W3C `traceparent`, else B3).
    pub(crate) trace_id: Option<String>,
    /// Envoy's `x-request-id`.
    pub(crate) request_id: Option<String>,
}

/// The trace id of a request's headers: W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// else B3 `x-b3-traceid`; only well-formed hex ids are taken (they go into logs).
pub fn trace_id(headers: &std::collections::HashMap<String, String>) -> Option<String> {
    authz_core::trace_context::trace_id(
        headers.get("traceparent").map(String::as_str),
        headers.get("x-b3-traceid").map(String::as_str),
    )
}

/// The trace context in headers read through `header` (a request's, or a call's metadata).
pub fn trace_parent<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
) -> Option<authz_core::trace_context::Parent> {
    authz_core::trace_context::parent(
        header("traceparent"),
        authz_core::trace_context::B3 {
            trace_id: header("x-b3-traceid"),
            span_id: header("x-b3-spanid"),
            sampled: header("x-b3-sampled"),
            flags: header("x-b3-flags"),
        },
    )
}

/// What a Check call's own gRPC metadata says: set by the calling proxy, not by its client.
#[derive(Debug, Clone, Default)]
pub struct CallMetadata {
    /// The calling proxy's `region/zone` ([`crate::CLIENT_LOCALITY_METADATA`]).
    pub locality: Option<String>,
    /// The trace context of the call (Envoy's ext_authz call carries its span's, when Envoy
    /// traces).
    pub trace: Option<authz_core::trace_context::Parent>,
}

/// What phase 1 found out about a request.
#[derive(Debug)]
pub struct Identified<'a> {
    pub route: &'a Route,
    pub method: &'a str,
    pub tier: Tier,
    /// The path routes and requirements see ([`match_path`]).
    pub match_path: String,
    pub authorization: Option<&'a str>,
    /// The client's address, as Envoy reports it ("" when absent).
    pub address: String,
    /// Whether the per-address limits apply (not to a batch: its caller is a service passing
    /// on its clients' tokens, one address for all of them).
    pub limit_by_address: bool,
    /// A filter's check after the answer (`context_extensions[authz_background]`) on a route
    /// this server's policy opts in (`background_check_ms`, `authenticated`): the token is
    /// verified here, then asked about at the IdP. Made after the answer, no per-address limit
    /// applies (the caller is the filter, not the client, which was answered already; a token
    /// that fails verification never reaches the IdP): see [`Identified::answered_already`].
    pub background: bool,
    /// A check after the answer (not one made before it because asynchronous verification is
    /// switched off: a client waits for that one, and the per-address limits apply).
    pub answered_already: bool,
}

/// The oldest cached introspection a background check uses: half the shortest window a route
/// may set, so the answer behind a token's previous check is never the answer to its next one
/// (checks of one token by several workers at once still share one IdP call).
pub const BACKGROUND_MAX_STALENESS_MS: u64 = 500;

/// How a Check of a route checked after the answer was made (see [`Identified::background`]).
fn background_mark(request: &CheckRequest) -> Background {
    Background::parse(
        request
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(BACKGROUND_EXTENSION))
            .map(String::as_str),
    )
}

/// Phase 1: the route, tier and credential of a request. A request without HTTP attributes
/// or an origin-form path, or naming an unknown tier, is refused here.
pub fn identify<'a>(
    config: &'a ServerConfig,
    request: &'a CheckRequest,
) -> Result<Identified<'a>, DenyReason> {
    identify_in(config, &config.routes, request)
}

/// [`identify`] with `routes` (a promoted or a candidate route policy) instead of the
/// configured ones.
pub fn identify_in<'a>(
    config: &'a ServerConfig,
    routes: &'a RouteTable,
    request: &'a CheckRequest,
) -> Result<Identified<'a>, DenyReason> {
    let attributes = request.attributes.as_ref();
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or(DenyReason::Internal)?;
    if !is_origin_form(&http.path) {
        return Err(DenyReason::BadRequest);
    }
    let overridden = http
        .headers
        .keys()
        .any(|name| is_method_override(name.as_bytes()));
    if let Err(ambiguity) = config.requests.screen(&http.path, overridden) {
        tracing::info!(
            why = ambiguity.as_str(),
            "request refused (see `requests` in the configuration)"
        );
        return Err(DenyReason::BadRequest);
    }
    let match_path = match_path(&http.path);
    let route = routes.find_matched(&http.method, &match_path);
    // Envoy's route may name a tier (`context_extensions["tier"]`); the stricter of it and
    // this server's own route table wins, so an Envoy route table that drifted from the policy
    // (or matches paths differently) can only make a check stricter, never weaker.
    let tier = match attributes.and_then(|a| a.context_extensions.get("tier")) {
        None => route.tier,
        Some(name) => name
            .parse::<Tier>()
            .map_err(|unknown| {
                tracing::error!(%unknown, "tier in context_extensions; failing closed");
                DenyReason::Internal
            })?
            .max(route.tier),
    };
    let mark = background_mark(request);
    let opted_in = route.background_check_ms.is_some() && tier == Tier::Authenticated;
    Ok(Identified {
        route,
        method: &http.method,
        tier,
        match_path,
        authorization: http.headers.get("authorization").map(String::as_str),
        address: request.get_client_address().cloned().unwrap_or_default(),
        limit_by_address: true,
        // Only where this server's policy opts the route in (the filter's does too): a marker
        // on any other route is a plain check.
        background: opted_in && mark != Background::No,
        answered_already: opted_in && mark == Background::AfterAnswer,
    })
}

/// The server's versions when a check began.
#[derive(Debug, Clone, Copy)]
struct Seen {
    policy_version: u64,
    change_version: u64,
}

/// A token that passed phase 2.
#[derive(Debug)]
pub struct Screened<'a> {
    pub token: &'a str,
    /// SHA-256 of the token: the key of every cache and revocation.
    pub key: TokenKey,
    /// What a revocation by token names, for a JWS ([`signed_part_digest`]): computed once,
    /// read before and after phase 3.
    pub signed: Option<TokenKey>,
}

impl<'a> Screened<'a> {
    pub fn of(token: &'a str) -> Screened<'a> {
        Screened {
            token,
            key: token_digest(token),
            signed: signed_part_digest(token),
        }
    }
}

/// Whether a denial is about the credential itself (a missing, malformed, inactive, revoked
/// or foreign token): those count against the client address's failed-token budget.
fn is_failed_token(reason: &DenyReason) -> bool {
    reason.status() == 401 && !matches!(reason, DenyReason::StepUp { .. })
}

impl CheckService {
    /// The rules of `tier` now: the configured ones, under the incident switches
    /// (`authz_core::switches`). `cache_max` bounds every use of a cached result (its
    /// freshness, and its stale-if-error window with it); `fail_closed` removes the
    /// stale-if-error window.
    pub(crate) fn rules_for(&self, tier: Tier) -> TierRules {
        let mut rules = self.config.tier_rules(tier);
        let (cap, fails_closed) = self.versions.tier_switches(tier, self.clock.now_ms());
        if let Some(cap) = cap {
            let window = rules
                .max_staleness_ms
                .saturating_add(rules.stale_if_error_ms)
                .min(cap);
            rules.max_staleness_ms = rules.max_staleness_ms.min(cap);
            rules.stale_if_error_ms = window.saturating_sub(rules.max_staleness_ms);
        }
        if fails_closed {
            rules.stale_if_error_ms = 0;
        }
        rules
    }

    /// Whether `tier` fails closed now: configured without stale-if-error, or switched to
    /// (a `cache_max` switch that narrows the stale-if-error window does not make it so).
    fn fails_closed(&self, tier: Tier) -> bool {
        self.config.tier_rules(tier).fails_closed()
            || self.versions.tier_switches(tier, self.clock.now_ms()).1
    }

    /// Decides a request, within the configured deadline, and answers it. `call` is what the
    /// gRPC call's own metadata says (the calling proxy's, never the client's): its locality
    /// (the request's `context_extensions["client_locality"]` wins) and its trace context.
    pub async fn decide(&self, request: CheckRequest, call: CallMetadata) -> CheckResponse {
        let client_locality = request
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(CLIENT_LOCALITY_EXTENSION))
            .cloned()
            .or(call.locality);
        let started = Instant::now();
        // What this decision can have seen: read before it is made, so a change applied while
        // it is under way makes the reply older than the change (a caching client then does
        // not keep it).
        let seen = Seen {
            policy_version: self.versions.policy_version(),
            change_version: self.versions.change_version(),
        };
        let headers = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|http| &http.headers);
        let parent = call.trace.or_else(|| {
            // The request's own headers are the client's (or an upstream proxy's): they name
            // the parent only where the configuration trusts them.
            let trusted = self
                .config
                .otlp
                .as_ref()
                .is_some_and(|o| o.trust_request_headers);
            headers
                .filter(|_| trusted)
                .and_then(|h| trace_parent(|name| h.get(name).map(String::as_str)))
        });
        let mut trace = Trace {
            cache: "none",
            route: "-".into(),
            parent: parent.clone(),
            // The trace the spans name, else the one the request's headers name.
            trace_id: parent
                .map(|p| p.trace_id)
                .or_else(|| headers.and_then(trace_id)),
            request_id: headers
                .and_then(|h| h.get("x-request-id"))
                .filter(|id| id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
                .cloned(),
            ..Trace::default()
        };
        let mut verdict = match tokio::time::timeout(
            self.config.check_timeout,
            self.evaluate(&request, &mut trace),
        )
        .await
        {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Deny(DenyReason::Deadline),
        };
        if let Verdict::Deny(reason) = &verdict {
            if is_failed_token(reason)
                && !trace.answered_already
                && !self
                    .limiters
                    .failed_attempt_allowed(&trace.address, self.clock.now_ms())
            {
                verdict = Verdict::Deny(DenyReason::RateLimited);
            }
        }
        if let (Some((key, exp)), Verdict::Deny(DenyReason::Inactive)) =
            (trace.background_verified, &verdict)
        {
            self.revoke_refused_token(key, exp, trace.token_label.clone());
            trace.token_revoked = true;
        }
        trace.stage("check", started);
        self.record(&verdict, &trace, client_locality);
        let directive = self.cache_directive(&verdict, &trace, seen);
        to_envoy(&verdict.check_response(&self.config.realm, &directive))
    }

    /// Phases 1 to 4, by the route policy enforced now; a check in a canary's sample is
    /// judged by its candidate too (`crate::canary`).
    async fn evaluate(&self, request: &CheckRequest, trace: &mut Trace) -> Verdict {
        let policy_started = Instant::now();
        let Some(routes) = self.route_policies.enforced() else {
            // A promoted route policy this server cannot read (see `route_policies`).
            return Verdict::Deny(DenyReason::Internal);
        };
        let id = match identify_in(&self.config, &routes, request) {
            Ok(id) => id,
            Err(reason) => return Verdict::Deny(reason),
        };
        let canary = self.route_policies.canary(self.clock.now_ms());
        trace.keep_claims = canary.is_some();
        let verdict = self.evaluate_identified(&id, policy_started, trace).await;
        if let Some(canary) = canary {
            self.compare_with_candidate(&canary, request, &id, &verdict, trace);
        }
        verdict
    }

    /// Phases 2 to 4 of an identified request.
    async fn evaluate_identified(
        &self,
        id: &Identified<'_>,
        policy_started: Instant,
        trace: &mut Trace,
    ) -> Verdict {
        trace.route = id.route.name.clone();
        trace.tier = Some(id.tier);
        trace.address = id.address.clone();
        if !id.tier.requires_token() {
            return self.allow(id.tier, None);
        }
        let entry = match self.establish(id, policy_started, trace).await {
            Ok(entry) => entry,
            Err(reason) => return Verdict::Deny(reason),
        };
        self.allow_with_context(id, &entry.result)
    }

    /// Phases 2 to 4 for a request that needs a token: who the caller is, by the tier's rules
    /// (screened, verified or introspected, authorized, its Status List entry judged). Also
    /// the token step of a batch, once per batch.
    /// `policy_started`: when the request's own phase 1 began (the `policy` stage ends once
    /// the token is screened).
    pub(crate) async fn establish(
        &self,
        id: &Identified<'_>,
        policy_started: Instant,
        trace: &mut Trace,
    ) -> Result<Arc<Cached>, DenyReason> {
        let mut rules = self.rules_for(id.tier);
        if id.background {
            // The request was answered from the JWT already: this asks whether the IdP still
            // stands by the token, so an answer cached for the tier's whole staleness will not do.
            rules.max_staleness_ms = rules.max_staleness_ms.min(BACKGROUND_MAX_STALENESS_MS);
        }
        let screened = self.screen(id, trace)?;
        trace.stage("policy", policy_started);
        trace.background = id.background;
        trace.answered_already = id.answered_already;
        let entry = if id.background {
            self.background_lookup(&screened, &rules, trace).await
        } else if self.idp.verifies_jwts()
            && !id.route.require.introspect
            && jws_typ(screened.token).is_some()
        {
            self.verify_jwt(&screened, &rules, trace).await
        } else {
            self.introspect(&screened, id.tier, &rules, trace).await
        };
        let entry = entry?;
        self.authorize(id, &screened, &entry.result, &rules, trace)?;
        if let Some(lists) = &self.status_lists {
            let started = Instant::now();
            let judged = lists.judge(&entry.result.raw, screened.token, &rules).await;
            trace.stage("status_list", started);
            judged?;
        }
        Ok(entry)
    }

    /// Whether the token was revoked: by its bytes (`token_hash`), or by what its signature
    /// covers (`token`: every encoding of the same signed content).
    fn token_revoked(&self, screened: &Screened) -> bool {
        self.versions.is_token_revoked(&screened.key)
            || screened
                .signed
                .is_some_and(|d| self.versions.is_token_revoked(&d))
    }

    /// A revoked token was presented: a revocation that did not know when its token expires
    /// learns it from the token. Read unverified, and only from what the revocation names: a
    /// revocation of these bytes (`key`) from the token itself (a JWS's `exp`, or what the
    /// IdP said of these bytes); a revocation of a JWS's signed part only from the `exp` in
    /// that signed part, which every token it names shares (a dotted token that is no JWS has
    /// no signed part to speak for).
    fn learn_revoked_expiry(&self, screened: &Screened) {
        let (token, key) = (screened.token, &screened.key);
        let ms = |s: i64| (s.max(0) as u64).saturating_mul(1000);
        let jws_exp = jws_typ(token)
            .and(authz_core::verify::jws_exp(token))
            .map(ms);
        let by_bytes = jws_exp
            .or_else(|| self.introspector.cached_expiry(key).map(ms))
            .map(|at| (*key, at));
        let by_signed_part = screened.signed.zip(jws_exp);
        let now_ms = self.clock.now_ms();
        for (digest, expires_at_ms) in by_bytes.into_iter().chain(by_signed_part) {
            if self
                .versions
                .learn_token_expiry(&digest, expires_at_ms, now_ms)
            {
                tracing::info!(
                    token = %authz_core::token_hash::digest_label(&digest),
                    expires_at_ms,
                    "revocation_expiry_learned"
                );
            }
        }
    }

    /// Phase 2: the token, before any cache or IdP is asked about it.
    fn screen<'a>(
        &self,
        id: &Identified<'a>,
        trace: &mut Trace,
    ) -> Result<Screened<'a>, DenyReason> {
        let token = id
            .authorization
            .and_then(bearer_token)
            .ok_or(DenyReason::MissingToken)?;
        if token.len() > self.config.max_token_bytes {
            return Err(DenyReason::Token(VerifyFailure::TooLarge));
        }
        let screened = Screened::of(token);
        trace.token_label = authz_core::token_hash::digest_label(&screened.key);
        if self.token_revoked(&screened) {
            self.learn_revoked_expiry(&screened);
            return Err(DenyReason::Revoked);
        }
        if id.limit_by_address
            && id.tier.requires_server()
            && !self.limiters.privileged_address_allowed(&id.address)
        {
            return Err(DenyReason::RateLimited);
        }
        // Above `authenticated`, shared data counts only while it is confirmed current; a tier
        // that fails closed refuses to decide without it (revocations made elsewhere could be
        // missing).
        if !trusts_unconfirmed_shared(id.tier)
            && self.shared.as_ref().is_some_and(|s| !s.confirmed())
            && self.fails_closed(id.tier)
        {
            return Err(DenyReason::SharedStateUnconfirmed);
        }
        // An address that just went over its failed-token budget gets no IdP call: only
        // tokens this server already holds answers for are decided.
        if !id.answered_already
            && id.limit_by_address
            && self
                .limiters
                .address_blocked(&id.address, self.clock.now_ms())
            && !self.introspector.holds(&screened.key)
        {
            return Err(DenyReason::RateLimited);
        }
        Ok(screened)
    }

    /// Phase 3 for a JWT access token: its signature and claims against the provider's keys
    /// (no IdP call); revocation and requirements follow in phase 4 as for any token. Keys not
    /// loaded is a fail-closed 503, like an IdP that does not answer.
    async fn verify_jwt(
        &self,
        screened: &Screened<'_>,
        rules: &TierRules,
        trace: &mut Trace,
    ) -> Result<Arc<Cached>, DenyReason> {
        let started = Instant::now();
        let verified = self.idp.verify(&screened.key, screened.token).await;
        trace.stage("jwt_verify", started);
        trace.cache = "jwt";
        let verified = verified.map_err(|failure| match failure {
            VerifyFailure::KeysUnavailable { .. } => DenyReason::KeysUnavailable,
            failure => DenyReason::Token(failure),
        })?;
        let now_ms = self.clock.now_ms();
        trace.fresh_for_ms = self.fresh_for_ms(rules, 0, verified.claims.expires_at);
        Ok(Arc::new(Cached {
            result: Introspection::from_verified_claims(&verified.claims),
            fetched_at_ms: now_ms,
            ttl_ms: 0,
        }))
    }

    /// Phase 3: introspection data fresh enough for the tier.
    async fn introspect(
        &self,
        screened: &Screened<'_>,
        tier: Tier,
        rules: &TierRules,
        trace: &mut Trace,
    ) -> Result<Arc<Cached>, DenyReason> {
        let started = Instant::now();
        let lookup = self
            .introspector
            .lookup(
                screened.key,
                screened.token,
                rules,
                trusts_unconfirmed_shared(tier),
            )
            .await;
        trace.stage("cache_lookup", started);
        let Lookup {
            entry,
            source,
            age_ms,
        } = lookup.map_err(|_| DenyReason::IdpUnavailable)?;
        trace.cache = source.as_str();
        trace.age_ms = age_ms;
        if source != Source::Stale {
            trace.fresh_for_ms = self.fresh_for_ms(rules, age_ms, entry.result.expires_at);
        }
        Ok(entry)
    }

    /// How long data `age_ms` old about a token expiring at `expires_at` (Unix s) stays fresh
    /// enough for the tier: what a caching client may reuse the decision for.
    fn fresh_for_ms(&self, rules: &TierRules, age_ms: u64, expires_at: Option<i64>) -> u64 {
        let now_ms = self.clock.now_ms();
        let until_exp = expires_at
            .map(|exp| (exp.max(0) as u64 * 1000).saturating_sub(now_ms))
            .unwrap_or(u64::MAX);
        rules
            .max_staleness_ms
            .saturating_sub(age_ms)
            .min(until_exp)
            .min(self.config.cache.cap_ms)
    }

    /// Phase 4: whether this active token may make this request.
    fn authorize(
        &self,
        id: &Identified<'_>,
        screened: &Screened<'_>,
        result: &Introspection,
        rules: &TierRules,
        trace: &mut Trace,
    ) -> Result<(), DenyReason> {
        if !result.active {
            return Err(DenyReason::Inactive);
        }
        if result.is_refresh_token() {
            return Err(DenyReason::Token(VerifyFailure::WrongType));
        }
        // What the token is for, by the filter's rules: an active token minted for another
        // API, by another issuer, of another type, or past its expiry is refused here too.
        let audience = if self.config.require_audience {
            Presence::Required
        } else {
            Presence::WhenPresent
        };
        let claims = result.as_claims();
        let now_seconds = self.clock.now_seconds();
        check_purpose(
            &self.config.token,
            &claims,
            jws_typ(screened.token).as_deref(),
            now_seconds,
            audience,
        )
        .map_err(DenyReason::Token)?;
        trace.subject = result.principal().map(|p| p.key());
        // Again after phase 3: a revocation applied while the IdP was asked (or the keys
        // fetched) must not let this answer through, nor into a proxy's cache.
        if self.token_revoked(screened) {
            return Err(DenyReason::Revoked);
        }
        if result
            .jti
            .as_deref()
            .is_some_and(|j| self.versions.is_jti_revoked(j))
        {
            return Err(DenyReason::Revoked);
        }
        // The principal's revocation (users and clients apart), and for a user token its
        // client's: a revoked client's users lose the tokens it obtained for them.
        let issued_ms = result.issued_at.unwrap_or(0).max(0) as u64 * 1000;
        let revoked = result.revocation_keys().iter().any(|key| {
            self.versions
                .subject_revoked_at_ms(key)
                .is_some_and(|revoked_at| issued_ms <= revoked_at)
        });
        if revoked {
            return Err(DenyReason::Revoked);
        }
        if let Some(key) = result.principal().map(|p| p.key()) {
            if id.tier.requires_server() && !self.limiters.privileged_subject_allowed(&key) {
                return Err(DenyReason::RateLimited);
            }
        }
        if trace.keep_claims {
            trace.established = Some(claims.clone());
        }
        id.route.require.check(&claims, &id.match_path)?;
        if let Some(step_up) = &rules.step_up {
            check_step_up(step_up, result, now_seconds).map_err(|challenge| {
                DenyReason::StepUp {
                    www_authenticate: challenge.www_authenticate(&self.config.realm),
                }
            })?;
        }
        Ok(())
    }

    /// The allow verdict: the verified context, set over whatever the client sent, and every
    /// other configured context header removed.
    pub fn allow(&self, tier: Tier, result: Option<&Introspection>) -> Verdict {
        let mut set = vec![
            (TIER_HEADER.to_owned(), tier.as_str().to_owned()),
            (
                POLICY_VERSION_HEADER.to_owned(),
                self.versions.policy_version().to_string(),
            ),
        ];
        if let Some(result) = result {
            if let Some(principal) = result.principal() {
                set.push((SUBJECT_HEADER.to_owned(), principal.id.to_owned()));
                set.push((
                    SUBJECT_KIND_HEADER.to_owned(),
                    principal.kind.as_str().to_owned(),
                ));
            }
            set.push((SCOPES_HEADER.to_owned(), result.scopes.join(" ")));
        }
        let mut remove: Vec<String> = self
            .config
            .strip_headers
            .iter()
            .filter(|name| !set.iter().any(|(set_name, _)| set_name == *name))
            .cloned()
            .collect();
        if !self.config.forward_token {
            remove.push("authorization".to_owned());
        }
        Verdict::Allow { set, remove }
    }

    /// [`CheckService::allow`] of a token, with the signed verification context when the
    /// policy attaches one: an allow the context cannot state (no principal, no key) fails
    /// closed rather than going out without one.
    fn allow_with_context(&self, id: &Identified<'_>, result: &Introspection) -> Verdict {
        let mut verdict = self.allow(id.tier, Some(result));
        let Some(ring) = &self.config.context else {
            return verdict;
        };
        let (Some(principal), Verdict::Allow { set, remove }) = (result.principal(), &mut verdict)
        else {
            tracing::warn!("an allowed token names no principal: no context can state it");
            return Verdict::Deny(DenyReason::Internal);
        };
        // Set, so not removed (Envoy applies removals after what it sets).
        remove.retain(|name| *name != ring.settings.header);
        let idp = result
            .raw
            .get("iss")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(&self.config.token.issuer);
        let decided = Decided {
            subject: principal.id,
            subject_kind: principal.kind.as_str(),
            idp,
            scopes: &result.scopes,
            tier: id.tier,
            tenant: id
                .route
                .require
                .tenant
                .as_ref()
                .and_then(|rule| rule.tenant_of(&id.match_path)),
            policy_version: self.versions.policy_version(),
            method: id.method,
            route: &id.route.name,
            token_claims: Some(&result.raw),
            token_expires_at: result.expires_at,
        };
        let now_seconds = self.clock.now_ms() / 1000;
        let Some(context) = ring.sign(&decided, now_seconds) else {
            return Verdict::Deny(DenyReason::Internal);
        };
        set.push((ring.settings.header.clone(), context));
        verdict
    }

    /// Phase 3 of a background check: the JWT verified here first (a token that does not
    /// verify is refused without an IdP call, and only a verified one may be revoked), then the
    /// IdP asked with an answer at most [`BACKGROUND_MAX_STALENESS_MS`] old. Without keys of
    /// its own the server only asks the IdP (and revokes nothing).
    async fn background_lookup(
        &self,
        screened: &Screened<'_>,
        rules: &TierRules,
        trace: &mut Trace,
    ) -> Result<Arc<Cached>, DenyReason> {
        if self.idp.verifies_jwts() && jws_typ(screened.token).is_some() {
            let verified = self.verify_jwt(screened, rules, trace).await?;
            trace.background_verified = verified
                .result
                .expires_at
                .map(|exp| (screened.signed.unwrap_or(screened.key), exp));
        }
        self.introspect(screened, Tier::Authenticated, rules, trace)
            .await
    }

    /// A background check found a token this server verified inactive at the IdP: it was
    /// allowed already, on a route a filter decides from the JWT alone, so it is revoked here
    /// and published through the change feed to every worker (by what its signature covers,
    /// until its verified `exp`). The write goes on after the reply (which says so: the filter
    /// revokes it at once itself). `key` is what the revocation names
    /// ([`authz_core::token_hash::revocation_digest`]), `label` the token's log label.
    fn revoke_refused_token(&self, key: TokenKey, exp: i64, label: String) {
        let change = crate::versions::Change::RevokeToken(
            key,
            Some(u64::try_from(exp).unwrap_or(0).saturating_mul(1000)),
        );
        let (changes, shared, metrics) = (
            self.changes.clone(),
            self.shared.clone(),
            self.metrics.clone(),
        );
        tokio::spawn(async move {
            let (applied, delivery) =
                crate::shared::record(changes.as_ref(), shared.as_deref(), change).await;
            metrics.inc("authz_background_revocations_total", &[]);
            tracing::warn!(
                token = %label,
                version = applied.stamp,
                shared = delivery.as_str(),
                "allowed, then revoked: a background check found the token inactive at the IdP"
            );
        });
    }

    /// What a caching client (the Wasm filter) may do with this verdict.
    fn cache_directive(&self, verdict: &Verdict, trace: &Trace, seen: Seen) -> CacheDirective {
        // A filter reuses an allow with its signed context: at most half the context's life.
        let context_cap_ms = self
            .config
            .context
            .as_ref()
            .map_or(u64::MAX, |ring| ring.settings.lifetime_seconds * 500);
        let ttl_ms = match verdict {
            Verdict::Allow { .. } if trace.subject.is_some() => {
                trace.fresh_for_ms.min(context_cap_ms)
            }
            Verdict::Deny(DenyReason::Inactive | DenyReason::Revoked) => DENY_CACHE_TTL_MS,
            Verdict::Deny(
                DenyReason::InsufficientScope
                | DenyReason::ClaimMismatch
                | DenyReason::TenantMismatch,
            ) => DENY_CACHE_TTL_MS.min(trace.fresh_for_ms),
            _ => 0,
        };
        let subject = trace.subject.clone();
        CacheDirective {
            ttl_ms,
            policy_version: seen.policy_version,
            change_version: seen.change_version,
            subject_epoch: subject
                .as_deref()
                .map(|s| self.versions.subject_epoch(s))
                .unwrap_or(0),
            subject,
            // Stale Status Lists too: a filter renews no trust from this server meanwhile.
            state_unconfirmed: self.shared.as_ref().is_some_and(|s| !s.confirmed())
                || self.status_lists.as_ref().is_some_and(|l| !l.current()),
            token_revoked: trace.token_revoked,
        }
    }

    /// Metrics and the decision line of one check.
    fn record(&self, verdict: &Verdict, trace: &Trace, client_locality: Option<String>) {
        let tier = trace.tier.unwrap_or(Tier::Regulated);
        self.metrics.inc(
            "authz_decisions_total",
            &[
                ("outcome", verdict.outcome()),
                ("reason", verdict.reason()),
                ("tier", tier.as_str()),
            ],
        );
        for stage in &trace.stages {
            self.metrics.observe_seconds(
                "authz_check_seconds",
                &[("stage", stage.name)],
                stage.seconds,
            );
            if stage.name == "check" {
                self.metrics.observe_seconds(
                    "authz_decision_seconds",
                    &[("outcome", verdict.outcome()), ("tier", tier.as_str())],
                    stage.seconds,
                );
            }
        }
        if let Some(exporter) = self
            .otlp
            .as_ref()
            .filter(|e| e.samples(trace.parent.as_ref()))
        {
            exporter.record(crate::otlp::CheckSpan {
                parent: trace.parent.as_ref(),
                stages: &trace.stages,
                attributes: vec![
                    ("authz.route", trace.route.clone()),
                    ("authz.tier", tier.as_str().to_owned()),
                    ("authz.outcome", verdict.outcome().to_owned()),
                    ("authz.reason", verdict.reason().to_owned()),
                    ("authz.cache", trace.cache.to_owned()),
                    (
                        "authz.policy_version",
                        self.versions.policy_version().to_string(),
                    ),
                ],
                error: matches!(verdict, Verdict::Deny(reason) if reason.status() >= 500),
            });
        }
        let stage_ms = |name: &str| {
            trace
                .stages
                .iter()
                .find(|stage| stage.name == name)
                .map(|stage| (stage.seconds * 1e6).round() / 1e3)
        };
        tracing::info!(
            decision = verdict.outcome(),
            reason = verdict.reason(),
            tier = tier.as_str(),
            route = trace.route.as_str(),
            background = trace.background,
            policy_version = self.versions.policy_version(),
            cache = trace.cache,
            data_age_ms = trace.age_ms,
            region = self.config.region.as_str(),
            zone = self.config.zone.as_str(),
            client_locality = client_locality.as_deref(),
            subject = trace.subject.as_deref(),
            token = trace.token_label.as_str(),
            trace_id = trace.trace_id.as_deref(),
            request_id = trace.request_id.as_deref(),
            latency_check_ms = stage_ms("check"),
            latency_policy_ms = stage_ms("policy"),
            latency_lookup_ms = stage_ms("cache_lookup"),
            "authz_decision"
        );
    }
}

/// Above `authenticated`, shared (L2) data counts only while the shared state is confirmed.
fn trusts_unconfirmed_shared(tier: Tier) -> bool {
    tier <= Tier::Authenticated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use serde_json::json;
    use std::collections::HashMap;

    const CONFIG: &str = r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
admin_token: "phase-tests-admin-token-4f2a9c"
realm: unit
introspection:
  endpoint: http://127.0.0.1:9/introspect
  client_id: unit
  client_secret: "phase-tests-client-secret-77b1"
token:
  issuer: https://idp.unit
  audiences: [api]
  max_bytes: 512
policy:
  routes:
    - {name: health, match: {exact: /healthz}, tier: public}
    - {name: admin, match: {prefix: /admin/}, tier: privileged, require: {scopes: [admin]}}
    - {name: tenant, match: {prefix: /tenants/}, tier: privileged, require: {tenant: {claim: tenant, path_segment: 2}}}
  default: {tier: authenticated}
"#;

    fn config() -> ServerConfig {
        ServerConfig::from_yaml(CONFIG).unwrap()
    }

    fn request(method: &str, path: &str, tier: Option<&str>) -> CheckRequest {
        let mut headers = HashMap::new();
        headers.insert("authorization".to_owned(), "Bearer abc".to_owned());
        let mut context_extensions = HashMap::new();
        if let Some(tier) = tier {
            context_extensions.insert("tier".to_owned(), tier.to_owned());
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        headers,
                        ..HttpRequest::default()
                    }),
                    ..AttrRequest::default()
                }),
                context_extensions,
                ..AttributeContext::default()
            }),
        }
    }

    /// Sets header `name` of a Check request to `value`.
    fn set_header(asked: &mut CheckRequest, name: &str, value: &str) {
        if let Some(http) = asked
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.headers.insert(name.into(), value.into());
        }
    }

    #[tokio::test]
    async fn a_cache_cap_narrows_stale_if_error_without_making_a_tier_fail_closed() {
        use crate::versions::{Change, SwitchChange};
        use authz_core::switches::Setting;
        let clock = crate::clock::ManualClock::new();
        let service = service(clock.clone());
        let switch = |setting: Setting| {
            service.changes.apply(
                &Change::Switch(SwitchChange {
                    setting,
                    at_ms: clock.now_ms(),
                    by: "unit".into(),
                }),
                None,
            );
        };
        assert!(!service.fails_closed(Tier::StandardWrite));
        assert!(service.fails_closed(Tier::Privileged), "configured so");
        switch(Setting::CacheMax {
            tier: Tier::StandardWrite,
            max_ms: Some(0),
            until_ms: None,
        });
        let rules = service.rules_for(Tier::StandardWrite);
        assert_eq!((rules.max_staleness_ms, rules.stale_if_error_ms), (0, 0));
        assert!(!service.fails_closed(Tier::StandardWrite));
        switch(Setting::FailClosed {
            tier: Tier::StandardWrite,
            on: true,
            until_ms: None,
        });
        assert!(service.fails_closed(Tier::StandardWrite));
    }

    #[test]
    fn only_a_check_after_the_answer_goes_without_per_address_limits() {
        let yaml = CONFIG.replace(
            "    - {name: health,",
            "    - {name: news, match: {prefix: /news/, methods: [GET]}, tier: authenticated, background_check_ms: 1000}\n    - {name: health,",
        );
        let config = ServerConfig::from_yaml(&yaml).unwrap();
        let marked = |path: &str, mark: Option<&str>| {
            let mut asked = request("GET", path, None);
            if let (Some(mark), Some(attributes)) = (mark, asked.attributes.as_mut()) {
                attributes
                    .context_extensions
                    .insert(BACKGROUND_EXTENSION.into(), mark.into());
            }
            let id = identify(&config, &asked).unwrap();
            (id.background, id.answered_already)
        };
        assert_eq!(marked("/news/1", Some("1")), (true, true));
        assert_eq!(
            marked("/news/1", Some("before")),
            (true, false),
            "a client waits: limited like any check"
        );
        assert_eq!(marked("/news/1", None), (false, false));
        assert_eq!(marked("/news/1", Some("yes")), (false, false));
        assert_eq!(marked("/other", Some("1")), (false, false), "not opted in");
    }

    #[test]
    fn identify_finds_route_tier_and_credential() {
        let config = config();
        let asked = request("GET", "/Admin;x/%75sers?q=1", None);
        let id = identify(&config, &asked).unwrap();
        assert_eq!(
            (id.route.name.as_str(), id.tier, id.match_path.as_str()),
            ("admin", Tier::Privileged, "/Admin/users")
        );
        assert_eq!(id.authorization, Some("Bearer abc"));
        let public = request("GET", "/healthz", None);
        assert_eq!(identify(&config, &public).unwrap().tier, Tier::Public);
        let told = request("GET", "/healthz", Some("regulated"));
        assert_eq!(identify(&config, &told).unwrap().tier, Tier::Regulated);
        // A weaker tier from Envoy than the server's own table: the table wins.
        let weaker = request("GET", "/admin/users", Some("authenticated"));
        assert_eq!(identify(&config, &weaker).unwrap().tier, Tier::Privileged);
    }

    #[test]
    fn identify_refuses_what_it_cannot_read() {
        let config = config();
        for (asked, reason) in [
            (request("GET", "*", None), DenyReason::BadRequest),
            (request("GET", ";/admin/x", None), DenyReason::BadRequest),
            (request("GET", "", None), DenyReason::BadRequest),
            (request("GET", "/x", Some("gold")), DenyReason::Internal),
            (CheckRequest::default(), DenyReason::Internal),
        ] {
            assert_eq!(identify(&config, &asked).unwrap_err(), reason);
        }
    }

    #[test]
    fn trace_ids_come_from_traceparent_or_b3() {
        let headers = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let w3c = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(&headers(&[("traceparent", w3c)])).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id(&headers(&[("x-b3-traceid", "80f198ee56343ba8")])).as_deref(),
            Some("000000000000000080f198ee56343ba8")
        );
        for junk in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-not-hex",
            "00-4bf92f3577b34da6a3ce929d0e0e4736\n{\"x\":1}-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id(&headers(&[("traceparent", junk)])), None, "{junk}");
        }
        assert_eq!(trace_id(&headers(&[])), None);
    }

    #[test]
    fn failed_tokens_are_the_credential_denials() {
        for reason in [
            DenyReason::MissingToken,
            DenyReason::Revoked,
            DenyReason::Inactive,
            DenyReason::Token(VerifyFailure::WrongAudience),
        ] {
            assert!(is_failed_token(&reason), "{reason:?}");
        }
        for reason in [
            DenyReason::InsufficientScope,
            DenyReason::RateLimited,
            DenyReason::IdpUnavailable,
            DenyReason::StepUp {
                www_authenticate: String::new(),
            },
        ] {
            assert!(!is_failed_token(&reason), "{reason:?}");
        }
    }

    fn service(clock: SharedClock) -> Arc<CheckService> {
        crate::build_service_with_clock(config(), clock).unwrap()
    }

    fn introspection(body: serde_json::Value) -> Introspection {
        Introspection::parse(body.to_string().as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn authorize_applies_purpose_revocation_and_requirements() {
        let clock = crate::clock::ManualClock::new();
        let service = service(clock.clone());
        let now = clock.now_seconds();
        let asked = request("GET", "/tenants/acme/x", None);
        let id = identify(&service.config, &asked).unwrap();
        let screened = Screened::of("opaque-token");
        let rules = service.config.tier_rules(id.tier);
        let check = |body: serde_json::Value| {
            let mut trace = Trace::default();
            service.authorize(&id, &screened, &introspection(body), &rules, &mut trace)
        };
        let good = json!({"active": true, "sub": "alice", "iss": "https://idp.unit",
                          "aud": "api", "tenant": "acme", "iat": now - 10, "exp": now + 600});
        assert_eq!(check(good.clone()), Ok(()));
        let with = |key: &str, value: serde_json::Value| {
            let mut body = good.clone();
            body[key] = value;
            body
        };
        assert_eq!(
            check(with("active", json!(false))),
            Err(DenyReason::Inactive)
        );
        assert_eq!(
            check(with("aud", json!("other-api"))),
            Err(DenyReason::Token(VerifyFailure::WrongAudience))
        );
        assert_eq!(
            check(with("iss", json!("https://evil"))),
            Err(DenyReason::Token(VerifyFailure::UnknownIssuer))
        );
        assert_eq!(
            check(with("tenant", json!("globex"))),
            Err(DenyReason::TenantMismatch)
        );
        // Expiry follows the server's clock.
        clock.advance_ms(3_600_000);
        assert_eq!(
            check(good.clone()),
            Err(DenyReason::Token(VerifyFailure::Expired))
        );
        let fresh = with("exp", json!(clock.now_seconds() + 600));
        service.versions.apply(
            &crate::versions::Change::RevokeSubject {
                subject: "alice".into(),
                revoked_at_ms: clock.now_ms(),
                epoch: None,
            },
            None,
        );
        assert_eq!(check(fresh), Err(DenyReason::Revoked));
    }

    #[tokio::test]
    async fn a_token_without_sub_is_named_by_its_client_everywhere() {
        let clock = crate::clock::ManualClock::new();
        let service = service(clock.clone());
        let now = clock.now_seconds();
        let client_token = introspection(json!({"active": true, "client_id": "batch-job",
            "scope": "read admin", "iss": "https://idp.unit", "aud": "api",
            "iat": now - 10, "exp": now + 600}));
        let Verdict::Allow { set, .. } = service.allow(Tier::Privileged, Some(&client_token))
        else {
            panic!("allow expected");
        };
        let get = |name: &str| set.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(get(SUBJECT_HEADER), Some("batch-job"));
        assert_eq!(get(SUBJECT_KIND_HEADER), Some("client_id"));
        assert_eq!(get(SCOPES_HEADER), Some("read admin"));
        // Subject revocation and the decision trace reach the client principal too.
        let asked = request("GET", "/admin/jobs", None);
        let id = identify(&service.config, &asked).unwrap();
        let screened = Screened::of("opaque-token");
        let rules = service.config.tier_rules(id.tier);
        let mut trace = Trace::default();
        assert_eq!(
            service.authorize(&id, &screened, &client_token, &rules, &mut trace),
            Ok(())
        );
        let client_key = authz_core::principal::client_key("batch-job");
        assert_eq!(trace.subject.as_deref(), Some(client_key.as_str()));
        let revoke = |subject: &str| {
            service.versions.apply(
                &crate::versions::Change::RevokeSubject {
                    subject: subject.into(),
                    revoked_at_ms: clock.now_ms(),
                    epoch: None,
                },
                None,
            );
        };
        // A user whose `sub` is the client's id is another principal: revoking the user
        // leaves the client alone.
        revoke("batch-job");
        assert_eq!(
            service.authorize(&id, &screened, &client_token, &rules, &mut trace),
            Ok(())
        );
        // A user token the client obtained (its `client_id`) passes until the client is revoked.
        let user_token = introspection(json!({"active": true, "sub": "carol",
            "client_id": "batch-job", "scope": "admin", "iss": "https://idp.unit",
            "aud": "api", "iat": now - 10, "exp": now + 600}));
        assert_eq!(
            service.authorize(&id, &screened, &user_token, &rules, &mut trace),
            Ok(())
        );
        revoke(&client_key);
        assert_eq!(
            service.authorize(&id, &screened, &client_token, &rules, &mut trace),
            Err(DenyReason::Revoked)
        );
        assert_eq!(
            service.authorize(&id, &screened, &user_token, &rules, &mut trace),
            Err(DenyReason::Revoked),
            "the user tokens a revoked client obtained"
        );
        // An IdP that names the client by `azp` only.
        let by_azp = introspection(json!({"active": true, "sub": "dave",
            "azp": "batch-job", "scope": "admin", "iss": "https://idp.unit",
            "aud": "api", "iat": now - 10, "exp": now + 600}));
        assert_eq!(
            service.authorize(&id, &screened, &by_azp, &rules, &mut trace),
            Err(DenyReason::Revoked)
        );
    }

    #[tokio::test]
    async fn screen_refuses_before_any_lookup() {
        let service = service(Arc::new(crate::clock::SystemClock));
        let long = format!("Bearer {}", "a".repeat(513));
        let mut asked = request("GET", "/admin/users", None);
        let screen = |asked: &CheckRequest| {
            let id = identify(&service.config, asked).unwrap();
            let mut trace = Trace::default();
            service.screen(&id, &mut trace).map(|s| s.token.len())
        };
        assert_eq!(screen(&asked), Ok(3));
        let set_authorization =
            |asked: &mut CheckRequest, value: &str| set_header(asked, "authorization", value);
        set_authorization(&mut asked, &long);
        assert_eq!(
            screen(&asked),
            Err(DenyReason::Token(VerifyFailure::TooLarge)),
            "token.max_bytes is 512"
        );
        set_authorization(&mut asked, "Basic YWxpY2U6c2VjcmV0");
        assert_eq!(screen(&asked), Err(DenyReason::MissingToken));
        set_authorization(&mut asked, "Bearer abc");
        service.versions.apply(
            &crate::versions::Change::RevokeToken(token_digest("abc"), None),
            None,
        );
        assert_eq!(screen(&asked), Err(DenyReason::Revoked));
    }

    #[test]
    fn identify_refuses_method_overrides_and_paths_upstreams_read_differently() {
        let config = config();
        let with_header = |name: &str| {
            let mut asked = request("GET", "/admin/users", None);
            set_header(&mut asked, name, "DELETE");
            asked
        };
        for name in authz_core::target::METHOD_OVERRIDE_HEADERS {
            assert_eq!(
                identify(&config, &with_header(name)).unwrap_err(),
                DenyReason::BadRequest,
                "{name}"
            );
        }
        for path in [
            "/healthz%2F..%2Fadmin",
            "/x/%2e%2e/admin",
            "/a%5cb",
            "/a//b",
        ] {
            assert_eq!(
                identify(&config, &request("GET", path, None)).unwrap_err(),
                DenyReason::BadRequest,
                "{path}"
            );
        }
        // `strip`: decided on the request line's method, the headers removed on allow.
        let lenient = ServerConfig::from_yaml(&format!(
            "{CONFIG}requests: {{method_override: strip, encoded_paths: allow}}\n"
        ))
        .unwrap();
        assert!(identify(&lenient, &with_header("x-http-method-override")).is_ok());
        assert!(identify(&lenient, &request("GET", "/a%2fb", None)).is_ok());
        for name in authz_core::target::METHOD_OVERRIDE_HEADERS {
            assert!(lenient.strip_headers.iter().any(|h| h == name), "{name}");
            assert!(!config.strip_headers.iter().any(|h| h == name), "{name}");
        }
    }

    #[tokio::test]
    async fn a_revoked_jws_is_refused_in_every_signature_encoding_and_after_phase_3() {
        let clock = crate::clock::ManualClock::new();
        let service = service(clock.clone());
        let asked = request("GET", "/admin/users", None);
        let id = identify(&service.config, &asked).unwrap();
        let rules = service.config.tier_rules(id.tier);
        let now = clock.now_seconds();
        let good = introspection(json!({"active": true, "sub": "alice", "scope": "admin",
            "iss": "https://idp.unit", "aud": "api", "iat": now - 10, "exp": now + 600}));
        // Two encodings of one signed content (as an ECDSA (r, s) and (r, n - s) would be).
        let (form_a, form_b) = (
            "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
            "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lo",
        );
        let screened = Screened::of(form_b);
        let mut trace = Trace::default();
        assert_eq!(
            service.authorize(&id, &screened, &good, &rules, &mut trace),
            Ok(())
        );
        // Revoked while phase 3 was under way: phase 4 refuses it.
        service.versions.apply(
            &crate::versions::Change::RevokeToken(
                authz_core::token_hash::revocation_digest(form_a),
                None,
            ),
            None,
        );
        assert_eq!(
            service.authorize(&id, &screened, &good, &rules, &mut trace),
            Err(DenyReason::Revoked)
        );
        assert!(service.token_revoked(&Screened::of(form_b)));
        assert!(!service.token_revoked(&Screened::of("opaque")));
    }

    #[tokio::test]
    async fn a_revoked_token_presented_again_teaches_its_revocation_when_to_go() {
        let clock = crate::clock::ManualClock::new();
        let service = service(clock.clone());
        let exp = clock.now_seconds() + 40 * 24 * 3600;
        // A JWS whose payload says `{"exp": …}` (its signature is never checked: it is
        // refused as revoked before anything else).
        let token = format!(
            "eyJhbGciOiJFUzI1NiJ9.{}.c2ln",
            base64_url(&json!({"exp": exp}).to_string())
        );
        let mut asked = request("GET", "/admin/users", None);
        set_header(&mut asked, "authorization", &format!("Bearer {token}"));
        let key = token_digest(&token);
        service
            .versions
            .apply(&crate::versions::Change::RevokeToken(key, None), None);
        let cursor = service.versions.change_version();
        let id = identify(&service.config, &asked).unwrap();
        let mut trace = Trace::default();
        assert_eq!(
            service.screen(&id, &mut trace).err(),
            Some(DenyReason::Revoked)
        );
        let update: serde_json::Value =
            serde_json::from_str(&service.versions.changes_since_v2(cursor, true)).unwrap();
        assert_eq!(
            update["tokens"][0][0],
            authz_core::token_hash::digest_hex(&key)
        );
        assert_eq!(
            update["tokens"][0][1],
            exp as u64 * 1000,
            "republished with it"
        );
    }

    fn base64_url(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    #[tokio::test]
    async fn refresh_tokens_and_answers_without_an_audience_are_refused() {
        let clock = crate::clock::ManualClock::new();
        let service = service(clock.clone());
        let asked = request("GET", "/admin/users", None);
        let id = identify(&service.config, &asked).unwrap();
        let rules = service.config.tier_rules(id.tier);
        let screened = Screened::of("opaque-token");
        let now = clock.now_seconds();
        let good = json!({"active": true, "sub": "alice", "scope": "admin",
            "iss": "https://idp.unit", "aud": "api", "iat": now - 10, "exp": now + 600});
        let check = |body: serde_json::Value| {
            let mut trace = Trace::default();
            service.authorize(&id, &screened, &introspection(body), &rules, &mut trace)
        };
        assert_eq!(check(good.clone()), Ok(()));
        for (key, value) in [
            ("token_use", json!("refresh_token")),
            ("token_type", json!("refresh_token")),
        ] {
            let mut body = good.clone();
            body[key] = value;
            assert_eq!(
                check(body),
                Err(DenyReason::Token(VerifyFailure::WrongType)),
                "{key}"
            );
        }
        for aud in [json!(null), json!([])] {
            let mut body = good.clone();
            body["aud"] = aud.clone();
            assert_eq!(
                check(body),
                Err(DenyReason::Token(VerifyFailure::WrongAudience)),
                "aud {aud}: require_audience is the default"
            );
        }
    }
}
