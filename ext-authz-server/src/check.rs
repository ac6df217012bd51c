//! `envoy.service.auth.v3.Authorization/Check`: one decision per request.
//!
//! Order: tier (from `context_extensions["tier"]`, else the route table, matched on the
//! canonical path) → token (b64token syntax) → revocation → rate limits (an address over its
//! failed-token budget gets no IdP call) → introspection (cache/IdP, by the tier's freshness
//! rules) → active → what the token is for (`authz_core::verify::check_purpose`, the filter's
//! rules) → subject revocation → route requirements → step-up → allow. `Check` never returns a gRPC error for a
//! decision: malformed input is a deny, a missed deadline is a fail-closed 503. Deny bodies and
//! `WWW-Authenticate` values are the filter's (`authz_core::deny_response`), so a client cannot
//! tell which component answered or why a token failed. One JSON decision line per check goes
//! to stdout; the token never appears in it (a hash prefix does).

use crate::config::ServerConfig;
use crate::introspector::{now_ms, Introspector, Lookup, Source};
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::versions::Versions;
use authz_core::decision::bearer_token;
use authz_core::ext_authz_proto::{CacheDirective, CLIENT_LOCALITY_EXTENSION};
use authz_core::fallback::check_step_up;
use authz_core::routes::{is_origin_form, match_path, Unmet};
use authz_core::token_hash::token_digest;
use authz_core::verify::{check_purpose, jws_typ, Presence};
use authz_core::{deny_response, DenyReason, Tier};
use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::pb::google::rpc;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Header names the server sets on allowed requests (and removes from clients' requests).
pub const SUBJECT_HEADER: &str = "x-auth-subject";
pub const SCOPES_HEADER: &str = "x-auth-scopes";
pub const TIER_HEADER: &str = "x-auth-tier";
pub const POLICY_VERSION_HEADER: &str = "x-authz-policy-version";

/// How long a caching client may reuse a denial (inactive, revoked, insufficient scope).
pub const DENY_CACHE_TTL_MS: u64 = 2_000;

/// Everything a check needs, shared by all requests.
pub struct CheckService {
    pub config: Arc<ServerConfig>,
    pub introspector: Arc<Introspector>,
    pub versions: Arc<Versions>,
    /// The shared tier (Redis), when configured.
    pub shared: Option<Arc<Shared>>,
    pub limiters: Arc<Limiters>,
    pub metrics: Arc<Metrics>,
}

/// Why a check ended the way it did (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow {
        subject: Option<String>,
        scopes: Vec<String>,
    },
    Deny(DenyReason),
    /// 401 asking for a more recent or stronger authentication.
    StepUp {
        www_authenticate: String,
    },
    /// 401 for a token revoked at this server (reason label `revoked`).
    Revoked,
    /// 401 for an inactive token.
    Inactive,
    /// 503: the IdP could not answer and the tier allows no stale answer.
    IdpUnavailable(&'static str),
    /// 503: the shared revocation state is not confirmed current and the tier fails closed.
    SharedUnconfirmed,
    /// 429.
    RateLimited(&'static str),
    /// 503: the check ran out of time.
    Deadline,
}

impl Outcome {
    fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Outcome::Allow { .. } => ("allow", "ok"),
            Outcome::Deny(r) => ("deny", r.as_str()),
            Outcome::StepUp { .. } => ("deny", "step_up_required"),
            Outcome::Revoked => ("deny", "revoked"),
            Outcome::Inactive => ("deny", "inactive"),
            Outcome::IdpUnavailable(_) => ("deny", "idp_unavailable"),
            Outcome::SharedUnconfirmed => ("deny", "shared_state_unconfirmed"),
            Outcome::RateLimited(_) => ("deny", "rate_limited"),
            Outcome::Deadline => ("deny", "deadline"),
        }
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

fn denied(status: u16, headers: Vec<(&str, String)>, body: &str) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: 7,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
            body: body.to_owned(),
        })),
        ..CheckResponse::default()
    }
}

/// Facts of one check, gathered for the decision log.
#[derive(Debug, Default)]
struct Trace {
    tier: Option<Tier>,
    route: String,
    token_label: String,
    cache: &'static str,
    age_ms: u64,
    subject: Option<String>,
    /// How long the introspection data behind this decision stays fresh enough for its tier
    /// (0 when stale or none).
    fresh_for_ms: u64,
    stages: Vec<(&'static str, f64)>,
}

impl CheckService {
    /// Decides a request, within the configured deadline. `caller_locality` is the calling
    /// proxy's `region/zone` from the call's metadata, if it sent one (the request's
    /// `context_extensions["client_locality"]` wins).
    pub async fn decide(
        &self,
        request: CheckRequest,
        caller_locality: Option<String>,
    ) -> CheckResponse {
        let client_locality = request
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(CLIENT_LOCALITY_EXTENSION))
            .cloned()
            .or(caller_locality);
        let started = Instant::now();
        let mut trace = Trace {
            cache: "none",
            ..Trace::default()
        };
        let outcome = match tokio::time::timeout(
            self.config.check_timeout,
            self.evaluate(&request, &mut trace),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Deadline,
        };
        let elapsed = started.elapsed().as_secs_f64();
        trace.stages.push(("check", elapsed));
        let tier = trace.tier.unwrap_or(Tier::Regulated);
        let (outcome_label, reason) = outcome.labels();
        self.metrics.inc(
            "authz_decisions_total",
            &[
                ("outcome", outcome_label),
                ("reason", reason),
                ("tier", tier.as_str()),
            ],
        );
        for (stage, seconds) in &trace.stages {
            self.metrics
                .observe_seconds("authz_check_seconds", &[("stage", stage)], *seconds);
        }
        let stages: serde_json::Map<String, serde_json::Value> = trace
            .stages
            .iter()
            .map(|(s, v)| ((*s).to_owned(), json!((v * 1e6).round() / 1e3)))
            .collect();
        println!(
            "{}",
            json!({
                "msg": "authz_decision",
                "decision": outcome_label,
                "reason": reason,
                "tier": tier.as_str(),
                "route": trace.route,
                "policy_version": self.versions.policy_version(),
                "cache": trace.cache,
                "data_age_ms": trace.age_ms,
                "region": self.config.region,
                "zone": self.config.zone,
                "client_locality": client_locality,
                "subject": trace.subject,
                "token": trace.token_label,
                "latency_ms": stages,
            })
        );
        let directive = self.cache_directive(&outcome, &trace);
        let mut response = self.respond(outcome, tier);
        response.dynamic_metadata = Some(to_envoy_struct(&directive.to_metadata()));
        response
    }

    /// What a caching client (the Wasm filter) may do with this decision.
    fn cache_directive(&self, outcome: &Outcome, trace: &Trace) -> CacheDirective {
        let ttl_ms = match outcome {
            Outcome::Allow {
                subject: Some(_), ..
            } => trace.fresh_for_ms,
            Outcome::Inactive | Outcome::Revoked => DENY_CACHE_TTL_MS,
            Outcome::Deny(
                DenyReason::InsufficientScope
                | DenyReason::ClaimMismatch
                | DenyReason::TenantMismatch,
            ) => DENY_CACHE_TTL_MS.min(trace.fresh_for_ms),
            _ => 0,
        };
        let subject = trace.subject.clone();
        CacheDirective {
            ttl_ms,
            policy_version: self.versions.policy_version(),
            change_version: self.versions.change_version(),
            subject_epoch: subject
                .as_deref()
                .map(|s| self.versions.subject_epoch(s))
                .unwrap_or(0),
            subject,
            state_unconfirmed: self.shared.as_ref().is_some_and(|s| !s.confirmed()),
        }
    }

    fn respond(&self, outcome: Outcome, tier: Tier) -> CheckResponse {
        let realm = &self.config.realm;
        let standard = |reason: DenyReason| {
            let r = deny_response(&reason, realm);
            denied(
                r.status,
                r.headers.iter().map(|(k, v)| (*k, v.clone())).collect(),
                r.body,
            )
        };
        match outcome {
            Outcome::Allow { subject, scopes } => self.ok_response(tier, subject.as_deref(), &scopes),
            Outcome::Deny(reason) => standard(reason),
            Outcome::Revoked | Outcome::Inactive => standard(DenyReason::MissingToken),
            Outcome::IdpUnavailable(_) | Outcome::SharedUnconfirmed | Outcome::Deadline => {
                standard(DenyReason::ServerRequired)
            }
            Outcome::StepUp { www_authenticate } => denied(
                401,
                vec![("www-authenticate", www_authenticate), ("content-type", "application/json".into()), ("cache-control", "no-store".into())],
                "{\"error\":\"insufficient_user_authentication\",\"error_description\":\"a more recent or stronger authentication is required\"}\n",
            ),
            Outcome::RateLimited(_) => denied(
                429,
                vec![("retry-after", "1".into()), ("content-type", "application/json".into()), ("cache-control", "no-store".into())],
                &format!("{{\"error\":\"rate_limited\",\"tier\":\"{}\"}}\n", tier.as_str()),
            ),
        }
    }

    async fn evaluate(&self, request: &CheckRequest, trace: &mut Trace) -> Outcome {
        let policy_started = Instant::now();
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let Some(http) = http else {
            trace.route = "-".into();
            return Outcome::Deny(DenyReason::Internal);
        };
        let headers: &HashMap<String, String> = &http.headers;
        let address = request.get_client_address().cloned().unwrap_or_default();
        if !is_origin_form(&http.path) {
            trace.route = "-".into();
            return Outcome::Deny(DenyReason::BadRequest);
        }
        let path = match_path(&http.path);
        let route = self.config.routes.find_matched(&http.method, &path);
        trace.route = route.name.clone();
        let extensions = request.attributes.as_ref().map(|a| &a.context_extensions);
        let tier = match extensions.and_then(|e| e.get("tier")) {
            None => route.tier,
            Some(name) => {
                match serde_json::from_value::<Tier>(json!(name)) {
                    Ok(tier) => tier,
                    Err(_) => {
                        eprintln!("ext_authz: unknown tier {name:?} in context_extensions; failing closed");
                        return Outcome::Deny(DenyReason::Internal);
                    }
                }
            }
        };
        trace.tier = Some(tier);
        if !tier.requires_token() {
            return self.allow(trace, None, tier);
        }
        let Some(token) = headers.get("authorization").and_then(|a| bearer_token(a)) else {
            return self.failed(&address, Outcome::Deny(DenyReason::MissingToken));
        };
        if token.len() > 16_384 {
            return self.failed(
                &address,
                Outcome::Deny(DenyReason::Token(authz_core::VerifyFailure::TooLarge)),
            );
        }
        let key = token_digest(token);
        trace.token_label = authz_core::token_hash::digest_label(&key);
        if self.versions.is_token_revoked(&key) {
            return self.failed(&address, Outcome::Revoked);
        }
        if tier.requires_server() && !self.limiters.privileged_address_allowed(&address) {
            return Outcome::RateLimited("privileged_per_address");
        }
        let rules = self.config.tier_rules(tier);
        // Above `authenticated`, shared data counts only while it is confirmed current; a tier
        // that fails closed refuses to decide without it (revocations made elsewhere could be
        // missing).
        let trust_unconfirmed_shared = tier <= Tier::Authenticated;
        if !trust_unconfirmed_shared
            && rules.fails_closed()
            && self.shared.as_ref().is_some_and(|s| !s.confirmed())
        {
            return Outcome::SharedUnconfirmed;
        }
        // An address that just went over its failed-token budget gets no IdP call: only
        // tokens this server already holds answers for are decided.
        if self.limiters.address_blocked(&address, now_ms()) && !self.introspector.holds(&key) {
            return Outcome::RateLimited("failed_tokens_per_address");
        }
        trace
            .stages
            .push(("policy", policy_started.elapsed().as_secs_f64()));
        let lookup_started = Instant::now();
        let lookup = self
            .introspector
            .lookup(key, token, &rules, trust_unconfirmed_shared)
            .await;
        trace
            .stages
            .push(("cache_lookup", lookup_started.elapsed().as_secs_f64()));
        let Lookup {
            entry,
            source,
            age_ms,
        } = match lookup {
            Ok(l) => l,
            Err(e) => return Outcome::IdpUnavailable(e.kind()),
        };
        trace.cache = source.as_str();
        trace.age_ms = age_ms;
        let result = &entry.result;
        if source != Source::Stale {
            let until_exp = result
                .expires_at
                .map(|exp| (exp.max(0) as u64 * 1000).saturating_sub(now_ms()))
                .unwrap_or(u64::MAX);
            trace.fresh_for_ms = rules
                .max_staleness_ms
                .saturating_sub(age_ms)
                .min(until_exp)
                .min(self.config.cache.cap_ms);
        }
        if !result.active {
            return self.failed(&address, Outcome::Inactive);
        }
        // What the token is for, by the filter's rules: an active token minted for another
        // API, by another issuer, of another type, or past its expiry is refused here too.
        let audience = if self.config.require_audience {
            Presence::Required
        } else {
            Presence::WhenPresent
        };
        if let Err(failure) = check_purpose(
            &self.config.token,
            &result.as_claims(),
            jws_typ(token).as_deref(),
            (now_ms() / 1000) as i64,
            audience,
        ) {
            return self.failed(&address, Outcome::Deny(DenyReason::Token(failure)));
        }
        trace.subject = result.subject.clone();
        if result
            .jti
            .as_deref()
            .is_some_and(|j| self.versions.is_jti_revoked(j))
        {
            return self.failed(&address, Outcome::Revoked);
        }
        if let Some(sub) = &result.subject {
            if let Some(revoked_at) = self.versions.subject_revoked_at_ms(sub) {
                let issued_ms = result.issued_at.unwrap_or(0).max(0) as u64 * 1000;
                if issued_ms <= revoked_at {
                    return self.failed(&address, Outcome::Revoked);
                }
            }
            if tier.requires_server() && !self.limiters.privileged_subject_allowed(sub) {
                return Outcome::RateLimited("privileged_per_subject");
            }
        }
        if let Err(unmet) = route.require.check(&result.as_claims(), &path) {
            return Outcome::Deny(match unmet {
                Unmet::Scope => DenyReason::InsufficientScope,
                Unmet::Claim => DenyReason::ClaimMismatch,
                Unmet::Tenant => DenyReason::TenantMismatch,
            });
        }
        if let Some(step_up) = &rules.step_up {
            if let Err(challenge) = check_step_up(step_up, result, (now_ms() / 1000) as i64) {
                return Outcome::StepUp {
                    www_authenticate: challenge.www_authenticate(&self.config.realm),
                };
            }
        }
        self.allow(trace, Some(result), tier)
    }

    /// Counts a failed-token attempt against the client address; over budget it becomes 429.
    fn failed(&self, address: &str, outcome: Outcome) -> Outcome {
        if self.limiters.failed_attempt_allowed(address, now_ms()) {
            outcome
        } else {
            Outcome::RateLimited("failed_tokens_per_address")
        }
    }

    fn allow(
        &self,
        trace: &mut Trace,
        result: Option<&authz_core::introspection::Introspection>,
        tier: Tier,
    ) -> Outcome {
        trace.tier = Some(tier);
        Outcome::Allow {
            subject: result.and_then(|r| r.subject.clone()),
            scopes: result.map(|r| r.scopes.clone()).unwrap_or_default(),
        }
    }

    /// The OK response for an allowed request: the verified context, set over whatever the
    /// client sent, and every other configured context header removed.
    pub fn ok_response(
        &self,
        tier: Tier,
        subject: Option<&str>,
        scopes: &[String],
    ) -> CheckResponse {
        let mut headers = vec![
            header(TIER_HEADER, tier.as_str()),
            header(
                POLICY_VERSION_HEADER,
                &self.versions.policy_version().to_string(),
            ),
        ];
        if let Some(sub) = subject {
            headers.push(header(SUBJECT_HEADER, sub));
            headers.push(header(SCOPES_HEADER, &scopes.join(" ")));
        }
        let set: Vec<&str> = headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| h.key.as_str())
            .collect();
        let mut remove: Vec<String> = self
            .config
            .strip_headers
            .iter()
            .chain([SUBJECT_HEADER.to_owned(), SCOPES_HEADER.to_owned()].iter())
            .filter(|name| !set.contains(&name.as_str()))
            .cloned()
            .collect();
        if !self.config.forward_token {
            remove.push("authorization".to_owned());
        }
        CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                message: String::new(),
                details: Vec::new(),
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove: remove,
                ..OkHttpResponse::default()
            })),
            ..CheckResponse::default()
        }
    }
}

/// Converts a `prost_types::Struct` (authz-core's) into envoy-types' identical message.
fn to_envoy_struct(s: &prost_types::Struct) -> envoy_types::pb::google::protobuf::Struct {
    use prost::Message;
    envoy_types::pb::google::protobuf::Struct::decode(s.encode_to_vec().as_slice())
        .unwrap_or_default()
}
