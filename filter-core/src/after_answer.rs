//! The worker's checks after the answer (`background_check_ms`): noting allowed requests of
//! opted-in routes, sending the checks `background` lets go, and what their answers do (the
//! server's word that it revoked a token revokes it here; nothing else changes anything).
//!
//! What it does not do: deny a request (the ones it concerns were answered already).

use crate::background::Noted;
use crate::commands::{BackgroundCheck, CallId, CheckOrder, CheckPurpose, Command, OwnedRequest};
use crate::host::{Host, LogLevel};
use crate::metrics::{Counter, Gauge};
use crate::worker::Worker;
use authz_core::decision_cache::CachedOutcome;
use authz_core::Tier;

impl<H: Host> Worker<H> {
    /// An allowed request of `route`: when the route is checked in the background and the
    /// token is due, its check is queued.
    pub(crate) fn note_background(
        &mut self,
        request: &OwnedRequest,
        route: &str,
        tier: Tier,
        now_ms: u64,
    ) {
        if !self.background.enabled() {
            return;
        }
        let Some(window_ms) = self
            .policy
            .routes
            .named(route)
            .and_then(|r| r.background_check_ms)
        else {
            return;
        };
        let Some(bearer) = request.bearer() else {
            return;
        };
        let token = self.caches.keyer.key(bearer);
        if !self.background.is_due(token, now_ms) {
            return;
        }
        let check = BackgroundCheck {
            request: request.clone(),
            route: route.to_owned(),
            tier,
            answered_ms: now_ms,
        };
        if self.background.note(token, check, window_ms, now_ms) == Noted::Dropped {
            self.host.count(Counter::BackgroundDropped);
        }
    }

    /// Sends the checks the rate lets go now (on wake-ups only: see the module doc).
    pub(crate) fn send_background(&mut self, now_ms: u64) {
        let Some(link) = &self.policy.server else {
            return;
        };
        let (cluster, timeout) = (
            link.cluster.clone(),
            std::time::Duration::from_millis(link.timeout_ms),
        );
        for check in self.background.take(now_ms) {
            self.host.count(Counter::BackgroundChecks);
            let call = self.outbox.call_id();
            let order = CheckOrder {
                cluster: cluster.clone(),
                timeout,
                tier: check.tier,
                request: check.request.clone(),
                purpose: CheckPurpose::AfterAnswer,
                as_after_answer: true,
            };
            self.background.started(call, check, now_ms);
            self.outbox.push(Command::Check { call, order });
        }
    }

    /// A check that could not be made, or whose answer was lost: nothing changes (a failed
    /// check never denies).
    pub(crate) fn background_lost(&mut self, call: CallId) {
        if self.background.finished(call).is_some() {
            self.host.count(Counter::BackgroundFailed);
        }
    }

    /// The server answered background check `token` (`grpc_status` 0) or the call failed. A
    /// token the server says it revoked (`CacheDirective::token_revoked`: it verified it and
    /// the IdP disowns it) is revoked in this worker at once, and the server has revoked it for
    /// every other through the change feed; anything else (a failure, another refusal) changes
    /// nothing: the route's answers stay as they were.
    pub(crate) fn on_background_reply(
        &mut self,
        call: CallId,
        grpc_status: u32,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) {
        let Some(check) = self.background.finished(call) else {
            return;
        };
        let reply = match (grpc_status, body) {
            (0, Some(body)) => authz_core::ext_authz_proto::decode_reply(&body).ok(),
            _ => None,
        };
        let (status, revoked) = match reply {
            Some(reply) => match reply.outcome {
                CachedOutcome::Allow { .. } => return,
                CachedOutcome::Deny { status, .. } => (status, reply.directive.token_revoked),
            },
            None => {
                self.host.count(Counter::BackgroundFailed);
                return;
            }
        };
        let where_ = format!(
            "route={} method={} path={} token={} answered_ms_ago={}",
            check.route,
            check.request.method,
            authz_core::routes::path_only(&check.request.path),
            check.request.token_label(),
            now_ms.saturating_sub(check.answered_ms)
        );
        if !revoked {
            // Only the server's word that it revoked the token (it verified it, and the IdP
            // disowns it) revokes it here: a refusal for any other reason (a policy or a
            // configuration that disagrees, a step-up, the server unable to decide) leaves the
            // answers as they were, and the next window asks again.
            self.host.count(Counter::BackgroundFailed);
            self.host.log(
                LogLevel::Info,
                &format!("jwt_authz background check answered {status}; nothing revoked {where_}"),
            );
            return;
        }
        let Some(bearer) = check.request.bearer() else {
            return;
        };
        let expires_at_ms = authz_core::verify::jws_exp(bearer)
            .map(|s| u64::try_from(s).unwrap_or(0).saturating_mul(1000));
        self.link.revocations.revoke_token(
            authz_core::token_hash::revocation_digest(bearer),
            expires_at_ms,
            now_ms,
        );
        self.host
            .set_gauge(Gauge::Revocations, self.link.revocations.len() as u64);
        self.host.count(Counter::BackgroundRevoked);
        self.host.log(
            LogLevel::Warn,
            &format!("jwt_authz allowed, then revoked: the server found the token disowned by the IdP and revoked it; refused from now on in every worker {where_}"),
        );
    }
}
