//! Turning a decision into the host's action: a final allow (with the signed verification
//! context and the background check it may carry) or a denial, each counted, timed (when the
//! request is) and logged; and the 400 for a request the filter cannot read.

use crate::commands::{Final, FinalAction, OwnedRequest};
use crate::decision_log::{Logged, Source};
use crate::host::{Host, LogLevel};
use crate::metrics::{Counter, Histogram};
use crate::read::Unreadable;
use crate::worker::Worker;
use authz_core::context::Decided;
use authz_core::{deny_response, Decision, DenyReason, Tier, VerifiedToken, VerifyFailure};

impl<H: Host> Worker<H> {
    /// Counts a final decision (and times it, if the request is timed).
    pub(crate) fn count_allow(&self, tier: Tier) {
        self.host.count(Counter::Decision { tier, denied: None });
        let allowed = true;
        self.timing
            .decided(&self.host, Histogram::Decision { tier, allowed });
    }

    /// Counts a denial (and times it, if the request is timed).
    pub(crate) fn count_deny(&self, tier: Tier, reason: &'static str) {
        self.host.count(Counter::denial(tier, reason));
        let allowed = false;
        self.timing
            .decided(&self.host, Histogram::Decision { tier, allowed });
    }

    /// Turns a final decision into an action, counting and logging it.
    pub(crate) fn finish(
        &mut self,
        context_id: u32,
        request: &OwnedRequest,
        decision: Decision,
        now_ms: u64,
    ) -> Final {
        match decision {
            Decision::Allow {
                tier,
                mut upstream_headers,
                route,
                token,
                ..
            } => {
                if let Some(token) = token {
                    match self.signed_context(request, &route, tier, &token, now_ms / 1000) {
                        Ok(Some(header)) => upstream_headers.push(header),
                        Ok(None) => {}
                        Err(reason) => return self.deny(context_id, request, tier, &route, reason),
                    }
                }
                self.note_background(request, &route, tier, now_ms);
                self.count_allow(tier);
                self.log_allow(&Logged {
                    request,
                    status: 200,
                    reason: "ok",
                    source: Source::Local,
                    tier,
                    route: &route,
                });
                let remove = if self.policy.forward_token {
                    Vec::new()
                } else {
                    vec!["authorization".to_owned()]
                };
                Final {
                    context_id,
                    action: FinalAction::Allow {
                        headers: upstream_headers,
                        remove,
                    },
                }
            }
            Decision::Deny {
                tier,
                reason,
                route,
            } => self.deny(context_id, request, tier, &route, reason),
            Decision::AwaitKeys {
                tier,
                route,
                failure,
                ..
            } => {
                let reason = match failure {
                    VerifyFailure::KeysUnavailable { .. } => DenyReason::KeysUnavailable,
                    failure => DenyReason::Token(failure),
                };
                self.deny(context_id, request, tier, &route, reason)
            }
        }
    }

    /// The signed context header for a local allow of `token`, when the policy attaches one:
    /// without a signing key yet (the change feed brings it) the request fails closed.
    fn signed_context(
        &mut self,
        request: &OwnedRequest,
        route: &str,
        tier: Tier,
        token: &VerifiedToken,
        now_seconds: u64,
    ) -> Result<Option<(String, String)>, DenyReason> {
        let (Some(settings), Some(bearer)) = (&self.policy.context, request.bearer()) else {
            return Ok(None);
        };
        let Some(principal) = token.claims.principal() else {
            // No context can state who called: fail closed rather than allow without one.
            return Err(DenyReason::Internal);
        };
        // The route the decision named; its path is read again only for a tenant rule.
        let tenant_rule = self
            .policy
            .routes
            .named(route)
            .and_then(|r| r.require.tenant.as_ref());
        let match_path = tenant_rule.map(|_| authz_core::routes::match_path(&request.path));
        let tenant = tenant_rule
            .zip(match_path.as_deref())
            .and_then(|(rule, path)| rule.tenant_of(path));
        let decided = Decided {
            subject: principal.id,
            subject_kind: principal.kind.as_str(),
            idp: self
                .policy
                .providers
                .get(token.provider)
                .map_or("", |p| p.issuer.as_str()),
            scopes: &token.claims.scopes,
            tier,
            tenant,
            policy_version: self.link.versions.policy_version,
            method: &request.method,
            route,
            token_claims: Some(&token.claims.raw),
            token_expires_at: token.claims.expires_at,
        };
        match self
            .context
            .context_for(settings, &self.caches.keyer, bearer, &decided, now_seconds)
        {
            Some((context, reused)) => {
                self.host.count(if reused {
                    Counter::ContextReused
                } else {
                    Counter::ContextSigned
                });
                Ok(Some((settings.header.clone(), context)))
            }
            None => Err(DenyReason::KeysUnavailable),
        }
    }

    pub(crate) fn deny(
        &self,
        context_id: u32,
        request: &OwnedRequest,
        tier: Tier,
        route: &str,
        reason: DenyReason,
    ) -> Final {
        self.count_deny(tier, reason.as_str());
        let response = deny_response(&reason, &self.policy.realm);
        self.log_denial(&Logged {
            request,
            status: response.status,
            reason: reason.as_str(),
            source: Source::Local,
            tier,
            route,
        });
        Final {
            context_id,
            action: FinalAction::Deny(response),
        }
    }

    /// A 400 for a request the filter cannot read (see [`crate::read_request`]).
    pub(crate) fn unreadable(&self, context_id: u32, unreadable: &Unreadable) -> Final {
        if let Some(ambiguity) = unreadable.ambiguity {
            self.host.log(
                LogLevel::Info,
                &format!(
                    "jwt_authz request refused: {} (see `requests` in the configuration)",
                    ambiguity.as_str()
                ),
            );
        }
        let tier = self.policy.routes.default.tier;
        self.deny(
            context_id,
            &unreadable.request,
            tier,
            "-",
            DenyReason::BadRequest,
        )
    }
}
