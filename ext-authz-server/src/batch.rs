//! Batch authorization for list endpoints: one caller, one action, up to `max_items` resources
//! → one decision per resource with its reason, in input order. A service behind the proxy
//! asks it (with the batch secret) instead of one check per item of a list.
//!
//! Phases: the batch is read and bounded ([`CheckService::authorize_batch`]: too many resources
//! is refused whole, 400); the caller is established **once** — a token by the same phases as a
//! single check (screened, verified or introspected, authorized, its Status List entry judged,
//! at the strictest tier of the rules the resources fall under), or a signed verification
//! context this server issued (signature, issuer, audience, lifetime; its subject's
//! revocation) — and a caller that fails is refused whole through the one deny table; then
//! `authz_core::resources` decides every resource, computing each distinct (rule, tenant,
//! attributes) once. One log line per batch (`authz_batch`); the token never appears in it.
//!
//! Transports: `POST /authorize/batch` on the admin port (JSON, see `admin.rs`) and the gRPC
//! method `authz.batch.v1.BatchAuthorization/Check` beside `Check` (see `batch_grpc.rs`).

use crate::check::{CheckService, Identified, Trace};
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

/// The claims of a context as rules read them: its subject, scopes, tenant and the token claims
/// it copied (`ext`).
fn context_caller_claims(context: &authz_context::Claims) -> Option<Claims> {
    let mut raw = context.ext.clone();
    raw.insert("sub".into(), json!(context.sub));
    raw.insert("scope".into(), json!(context.scope));
    if let Some(tenant) = &context.tenant {
        raw.entry("tenant").or_insert_with(|| json!(tenant));
    }
    Claims::from_json(Value::Object(raw).to_string().as_bytes()).ok()
}

/// Who asks, established once.
struct Established {
    claims: Claims,
    principal: Option<String>,
    tier: Tier,
    label: String,
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
        let caller = match (&request.token, &request.context) {
            (Some(token), None) => self.establish_token(token, tier, address).await?,
            (None, Some(context)) => self.establish_context(context)?,
            _ => return Err(BatchError::BadRequest("exactly one of token or context")),
        };
        let decided = batch.rules.decide_all(
            &Caller {
                claims: &caller.claims,
                principal: caller.principal.as_deref(),
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
            subject = caller.principal.as_deref().unwrap_or("-"),
            action = request.action.as_str(),
            tier = caller.tier.as_str(),
            resources = got,
            allowed,
            computed = decided.computed,
            "authz_batch"
        );
        Ok(BatchAnswer {
            subject: caller.principal,
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

    /// The token's caller, by the phases of a single check at `tier`.
    async fn establish_token(
        &self,
        token: &str,
        tier: Tier,
        address: &str,
    ) -> Result<Established, BatchError> {
        let route = Route {
            name: "batch".into(),
            path: None,
            methods: Vec::new(),
            ignore_case: true,
            tier,
            require: Default::default(),
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
            background: false,
        };
        let mut trace = Trace::default();
        let entry = self
            .establish(&id, Instant::now(), &mut trace)
            .await
            .map_err(BatchError::Denied)?;
        Ok(Established {
            claims: entry.result.as_claims(),
            principal: entry.result.principal().map(|p| p.id.to_owned()),
            tier,
            label: trace.token_label,
        })
    }

    /// A signed context's caller: issued by this server's keys for its audience, within its
    /// lifetime, its subject not revoked since it was made. Its tier is the one it was made at.
    fn establish_context(&self, context: &str) -> Result<Established, BatchError> {
        let refused = BatchError::Denied(DenyReason::Token(VerifyFailure::Malformed(
            "context refused",
        )));
        let ring = self.config.context.as_ref().ok_or(refused.clone())?;
        let now = u64::try_from(self.clock.now_seconds()).unwrap_or(0);
        let keys = authz_context::KeySet::from_jwks(ring.jwks(now).to_string().as_bytes())
            .map_err(|_| refused.clone())?;
        let verifier = authz_context::Verifier::new(&ring.settings.issuer, &ring.settings.audience);
        let claims = verifier
            .verify_unbound(context, &keys, now)
            .map_err(|why| {
                tracing::info!(why = why.as_str(), "batch: signed context refused");
                refused.clone()
            })?;
        let (subject, client) = if claims.sub_kind == "client_id" {
            (None, Some(claims.sub.as_str()))
        } else {
            (Some(claims.sub.as_str()), None)
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
        let tier = claims.tier.parse::<Tier>().map_err(|_| refused.clone())?;
        Ok(Established {
            claims: context_caller_claims(&claims).ok_or(refused)?,
            principal: Some(claims.sub.clone()),
            tier,
            label: "context".into(),
        })
    }
}
