//! Batch authorization for list endpoints: one caller, one action, up to `max_items` resources
//! → one decision per resource with its reason, in input order. A service behind the proxy
//! asks it (with the batch secret) instead of one check per item of a list.
//!
//! Phases: the batch is read and bounded ([`CheckService::authorize_batch`]: too many resources
//! is refused whole, 400); the caller is established **once** — a token by the same phases as a
//! single check (screened, verified or introspected, authorized, its Status List entry judged,
//! at the strictest tier of the rules the resources fall under, introspected when one of them
//! says `require.introspect`), or a signed verification context this server issued
//! (signature, issuer, audience, lifetime; made under the current policy version, no older
//! than its tier's `max_staleness_ms`, its subject not revoked since; good for rules up to
//! `standard_write` only: a context is not a fresh answer from the IdP) — and a caller that
//! fails is refused whole through the one deny table; then
//! `authz_core::resources` decides every resource, computing each distinct (rule, tenant,
//! attributes) once. One log line per batch (`authz_batch`); the token never appears in it.
//!
//! Transports: `POST /authorize/batch` on the admin port (JSON, see `admin.rs`) and the gRPC
//! method `authz.batch.v1.BatchAuthorization/Check` beside `Check` (see `batch_grpc.rs`).

use crate::check::{CheckService, Identified, Trace};
use authz_core::principal::PrincipalKind;
use authz_core::resources::{Caller, ItemReason, Resource, MAX_FIELD_BYTES};
use authz_core::routes::Route;
use authz_core::{Claims, DenyReason, Tier, VerifyFailure};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;

/// A batch as a caller sends it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The caller's access token (what it sent the list endpoint as a bearer token).
    #[serde(default)]
    pub token: Option<String>,
    /// Or a signed verification context this server (or a filter with its keys) issued.
    #[serde(default)]
    pub context: Option<String>,
    /// What the caller wants to do to each resource (`read`, `update`, ...).
    pub action: String,
    #[serde(default)]
    pub resources: Vec<Resource>,
}

/// The decisions of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAnswer {
    /// The caller's principal, if any.
    pub subject: Option<String>,
    /// `sub` (a user) or `client_id` (a client's own token).
    pub subject_kind: Option<&'static str>,
    /// The tier the caller was established at.
    pub tier: Tier,
    /// Resource id and decision, in input order.
    pub decisions: Vec<(String, ItemReason)>,
    /// Distinct rule evaluations made (the rest were reused).
    pub computed: usize,
}

impl BatchAnswer {
    pub fn to_json(&self) -> Value {
        json!({
            "subject": self.subject,
            "subject_kind": self.subject_kind,
            "tier": self.tier.as_str(),
            "decisions": self.decisions.iter().map(|(id, reason)| json!({
                "id": id, "allowed": reason.allowed(), "reason": reason.as_str()
            })).collect::<Vec<_>>(),
            "computed": self.computed,
        })
    }
}

/// Why a batch was refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// No `resources` configured.
    NotConfigured,
    TooManyResources {
        max: usize,
        got: usize,
    },
    BadRequest(&'static str),
    /// The caller could not be established (through the one deny table, as any check).
    Denied(DenyReason),
}

impl BatchError {
    pub fn label(&self) -> &'static str {
        match self {
            BatchError::NotConfigured => "not_configured",
            BatchError::TooManyResources { .. } => "too_many_resources",
            BatchError::BadRequest(_) => "bad_request",
            BatchError::Denied(reason) => reason.as_str(),
        }
    }
}

/// The claims of a context as rules read them: the token claims it copied (`ext`,
/// `context.claims` in the policy) and its scopes, nothing else (a rule reading a claim the
/// context does not carry is not met; the route's checked tenant is not a claim).
fn context_caller_claims(context: &authz_context::Claims) -> Option<Claims> {
    let mut raw = context.ext.clone();
    raw.insert("scope".into(), json!(context.scope));
    Claims::from_json(Value::Object(raw).to_string().as_bytes()).ok()
}

/// Who asks, established once.
struct Established {
    claims: Claims,
    /// The principal's id and kind.
    principal: Option<(String, PrincipalKind)>,
    tier: Tier,
    label: String,
}

impl Established {
    /// The user an `owner` rule compares: a client's own token owns nothing.
    fn user(&self) -> Option<&str> {
        match &self.principal {
            Some((id, PrincipalKind::Subject)) => Some(id),
            _ => None,
        }
    }
}

impl CheckService {
    /// Decides a batch within the check deadline. `address`: the calling service's, for the
    /// per-address limits.
    pub async fn authorize_batch(
        &self,
        request: &BatchRequest,
        address: &str,
    ) -> Result<BatchAnswer, BatchError> {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(
            self.config.check_timeout,
            self.decide_batch(request, address),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(BatchError::Denied(DenyReason::Deadline)),
        };
        let label = match &outcome {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics
            .inc("authz_batch_requests_total", &[("outcome", label)]);
        self.metrics
            .observe_seconds("authz_batch_seconds", &[], started.elapsed().as_secs_f64());
        outcome
    }

    async fn decide_batch(
        &self,
        request: &BatchRequest,
        address: &str,
    ) -> Result<BatchAnswer, BatchError> {
        let batch = self
            .config
            .batch
            .as_ref()
            .ok_or(BatchError::NotConfigured)?;
        let got = request.resources.len();
        if got > batch.rules.max_items {
            return Err(BatchError::TooManyResources {
                max: batch.rules.max_items,
                got,
            });
        }
        if request.action.is_empty() || request.action.len() > MAX_FIELD_BYTES {
            return Err(BatchError::BadRequest("action is empty or too long"));
        }
        let tier = batch
            .rules
            .batch_tier(&request.action, &request.resources)
            .unwrap_or(Tier::Authenticated);
        let introspect = batch
            .rules
            .batch_introspects(&request.action, &request.resources);
        let caller = match (&request.token, &request.context) {
            (Some(token), None) => {
                self.establish_token(token, tier, introspect, address)
                    .await?
            }
            (None, Some(context)) => self.establish_context(context)?,
            _ => return Err(BatchError::BadRequest("exactly one of token or context")),
        };
        let decided = batch.rules.decide_all(
            &Caller {
                claims: &caller.claims,
                user: caller.user(),
                tier: caller.tier,
            },
            &request.action,
            &request.resources,
        );
        let allowed = decided.reasons.iter().filter(|r| r.allowed()).count();
        self.metrics.add(
            "authz_batch_items_total",
            &[("decision", "allow")],
            allowed as u64,
        );
        self.metrics.add(
            "authz_batch_items_total",
            &[("decision", "deny")],
            (got - allowed) as u64,
        );
        tracing::info!(
            token = %caller.label,
            subject = caller.principal.as_ref().map_or("-", |(id, _)| id.as_str()),
            action = request.action.as_str(),
            tier = caller.tier.as_str(),
            resources = got,
            allowed,
            computed = decided.computed,
            "authz_batch"
        );
        Ok(BatchAnswer {
            subject_kind: caller.principal.as_ref().map(|(_, kind)| kind.as_str()),
            subject: caller.principal.map(|(id, _)| id),
            tier: caller.tier,
            decisions: request
                .resources
                .iter()
                .map(|r| r.id.clone())
                .zip(decided.reasons)
                .collect(),
            computed: decided.computed,
        })
    }

    /// The token's caller, by the phases of a single check at `tier` (asking the IdP even
    /// about a JWT when `introspect`).
    async fn establish_token(
        &self,
        token: &str,
        tier: Tier,
        introspect: bool,
        address: &str,
    ) -> Result<Established, BatchError> {
        let route = Route {
            name: "batch".into(),
            path: None,
            methods: Vec::new(),
            ignore_case: true,
            tier,
            require: authz_core::routes::Requirements {
                introspect,
                ..Default::default()
            },
            fresh_cache_ms: None,
            background_check_ms: None,
        };
        let authorization = format!("Bearer {token}");
        let id = Identified {
            route: &route,
            method: "POST",
            tier,
            match_path: "/".into(),
            authorization: Some(&authorization),
            address: address.to_owned(),
            limit_by_address: false,
            background: false,
            answered_already: false,
        };
        let mut trace = Trace::default();
        let entry = self
            .establish(&id, Instant::now(), &mut trace)
            .await
            .map_err(BatchError::Denied)?;
        Ok(Established {
            claims: entry.result.as_claims(),
            principal: entry.result.principal().map(|p| (p.id.to_owned(), p.kind)),
            tier,
            label: trace.token_label,
        })
    }

    /// A signed context's caller: issued by this server's keys for its audience, within its
    /// lifetime, under the current policy version, no older than its tier's
    /// `max_staleness_ms`, its subject not revoked since it was made. Good for rules up to
    /// `standard_write` (a context from a privileged decision counts as `standard_write`).
    fn establish_context(&self, context: &str) -> Result<Established, BatchError> {
        let refused = BatchError::Denied(DenyReason::Token(VerifyFailure::Malformed(
            "context refused",
        )));
        let ring = self.config.context.as_ref().ok_or(refused.clone())?;
        let now = u64::try_from(self.clock.now_seconds()).unwrap_or(0);
        let keys = ring.key_set(now);
        let verifier = authz_context::Verifier::new(&ring.settings.issuer, &ring.settings.audience);
        let claims = verifier
            .verify_unbound(context, &keys, now)
            .map_err(|why| {
                tracing::info!(why = why.as_str(), "batch: signed context refused");
                refused.clone()
            })?;
        let made_tier = claims.tier.parse::<Tier>().map_err(|_| refused.clone())?;
        let age_ms = now.saturating_sub(claims.iat).saturating_mul(1000);
        if claims.pv != self.versions.policy_version()
            || age_ms > self.rules_for(made_tier).max_staleness_ms
        {
            tracing::info!(
                policy_version = claims.pv,
                age_ms,
                "batch: signed context refused (made under another policy version, or too old for its tier)"
            );
            return Err(refused);
        }
        let kind = if claims.sub_kind == "client_id" {
            PrincipalKind::Client
        } else {
            PrincipalKind::Subject
        };
        let (subject, client) = match kind {
            PrincipalKind::Client => (None, Some(claims.sub.as_str())),
            PrincipalKind::Subject => (Some(claims.sub.as_str()), None),
        };
        let made_ms = claims.iat.saturating_mul(1000);
        let revoked = authz_core::principal::revocation_keys(subject, client)
            .iter()
            .any(|key| {
                self.versions
                    .subject_revoked_at_ms(key)
                    .is_some_and(|at| at >= made_ms)
            });
        if revoked {
            return Err(BatchError::Denied(DenyReason::Revoked));
        }
        Ok(Established {
            claims: context_caller_claims(&claims).ok_or(refused)?,
            principal: Some((claims.sub.clone(), kind)),
            tier: made_tier.min(Tier::StandardWrite),
            label: "context".into(),
        })
    }
}
