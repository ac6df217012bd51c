//! Checks after the answer (`background_check_ms`): which allowed requests of an opted-in route
//! the server should look at, and when.
//!
//! A token is checked at most once per its route's window (a hot token costs one check per
//! window, not one per request), the checks waiting to go are bounded, and at most
//! [`MAX_PER_TICK`] leave per tick: past that, checks wait or are dropped (never a denial). The
//! worker turns a refusal into a revocation; a failure changes nothing.
//!
//! What it does not do: decide, or dispatch. The root context dispatches what [`take`] hands
//! out (it outlives the request, which has been answered already).
//!
//! [`take`]: BackgroundChecks::take

use crate::commands::{BackgroundCheck, BackgroundOrder, OwnedRequest};
use authz_core::Tier;
use std::collections::{HashMap, VecDeque};

/// Checks waiting to be dispatched, at most (past it a due check is dropped and counted).
pub const MAX_QUEUED: usize = 256;
/// Tokens remembered with their next due time, at most (cleared when full: then each is
/// checked once more).
const MAX_TRACKED: usize = 16_384;
/// Checks handed out per second, at most, whatever the tick period.
pub const MAX_PER_SECOND: u64 = 64;
/// Checks handed out at once, at most.
pub const MAX_BURST: u64 = 16;
/// The longest path kept for a check (a longer one is cut at a character boundary).
const MAX_PATH_BYTES: usize = 4_096;
/// A call not answered this long after it left is forgotten (Envoy answers every call, with
/// a timeout status if need be: this bounds the map whatever happens).
const FORGET_CALL_MS: u64 = 60_000;

/// What became of an allowed request of a checked route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// Its token's check is queued.
    Queued,
    /// Its token was checked (or queued) within the window.
    NotDue,
    /// Due, but the queue is full: dropped (the token is checked on a later request).
    Dropped,
}

/// The worker's background checks.
#[derive(Debug, Default)]
pub struct BackgroundChecks {
    /// Token key → when it may be checked again (ms).
    next_due: HashMap<u128, u64>,
    queue: VecDeque<BackgroundCheck>,
    /// Dispatched: call token → the check and when it left (ms).
    in_flight: HashMap<u32, (BackgroundCheck, u64)>,
    /// Checks that may leave now (a budget refilled at [`MAX_PER_SECOND`], up to
    /// [`MAX_BURST`]), in thousandths of a check.
    budget_millis: u64,
    budget_at_ms: u64,
}

impl BackgroundChecks {
    /// Whether a check of `token` would be queued now (its window passed, room in the queue).
    pub fn is_due(&self, token: u128, now_ms: u64) -> bool {
        self.next_due.get(&token).is_none_or(|due| now_ms >= *due)
    }

    /// An allowed request of a route checked every `window_ms`: queued when its token is due
    /// and the queue has room.
    pub fn note(
        &mut self,
        token: u128,
        mut check: BackgroundCheck,
        window_ms: u64,
        now_ms: u64,
    ) -> Noted {
        if !self.is_due(token, now_ms) {
            return Noted::NotDue;
        }
        if self.queue.len() >= MAX_QUEUED {
            return Noted::Dropped;
        }
        let path = authz_core::routes::path_only(&check.request.path);
        let mut end = path.len().min(MAX_PATH_BYTES);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        check.request.path = path.get(..end).unwrap_or("/").to_owned();
        if self.next_due.len() >= MAX_TRACKED {
            self.next_due.clear();
        }
        self.next_due
            .insert(token, now_ms.saturating_add(window_ms));
        self.queue.push_back(check);
        Noted::Queued
    }

    /// The checks to dispatch now, oldest first, within the budget; calls left unanswered
    /// for [`FORGET_CALL_MS`] are forgotten.
    pub fn take(&mut self, now_ms: u64) -> Vec<BackgroundCheck> {
        self.in_flight
            .retain(|_, (_, left_ms)| now_ms.saturating_sub(*left_ms) < FORGET_CALL_MS);
        let refill = now_ms
            .saturating_sub(self.budget_at_ms)
            .saturating_mul(MAX_PER_SECOND);
        self.budget_millis = self
            .budget_millis
            .saturating_add(refill)
            .min(MAX_BURST * 1000);
        self.budget_at_ms = now_ms;
        let affordable = usize::try_from(self.budget_millis / 1000).unwrap_or(usize::MAX);
        let n = self.queue.len().min(affordable);
        self.budget_millis -= n as u64 * 1000;
        self.queue.drain(..n).collect()
    }

    /// The host dispatched `check` as call `token` at `now_ms`.
    pub fn started(&mut self, token: u32, check: BackgroundCheck, now_ms: u64) {
        self.in_flight.insert(token, (check, now_ms));
    }

    /// Whether `token` is a background check's call.
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight.contains_key(&token)
    }

    /// The check call `token` answered (or failed).
    pub fn finished(&mut self, token: u32) -> Option<BackgroundCheck> {
        self.in_flight.remove(&token).map(|(check, _)| check)
    }
}

impl<H: crate::host::Host> crate::worker::Worker<H> {
    /// An allowed request of `route`: when the route is checked in the background and the
    /// token is due, its check is queued.
    pub(crate) fn note_background(
        &mut self,
        request: &OwnedRequest,
        route: &str,
        tier: Tier,
        now_ms: u64,
    ) {
        if !self.background_routes {
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
        let token = self.keyer.key(bearer);
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
            self.host.count(crate::metrics::Counter::BackgroundDropped);
        }
    }

    /// The checks to dispatch on this tick.
    pub(crate) fn background_orders(&mut self, now_ms: u64) -> Vec<BackgroundOrder> {
        let Some(link) = &self.policy.server else {
            return Vec::new();
        };
        let (cluster, timeout) = (
            link.cluster.clone(),
            std::time::Duration::from_millis(link.timeout_ms),
        );
        self.background
            .take(now_ms)
            .into_iter()
            .map(|check| BackgroundOrder {
                check,
                cluster: cluster.clone(),
                timeout,
            })
            .collect()
    }

    /// The host dispatched `order` as call `token`.
    pub fn background_started(&mut self, token: u32, order: BackgroundOrder, now_ms: u64) {
        self.host.count(crate::metrics::Counter::BackgroundChecks);
        self.background.started(token, order.check, now_ms);
    }

    /// The host could not dispatch `order`: nothing changes (a failed check never denies).
    pub fn background_not_started(&self, _order: &BackgroundOrder) {
        self.host.count(crate::metrics::Counter::BackgroundFailed);
    }

    /// Whether call `token` is a background check's.
    pub fn owns_background(&self, token: u32) -> bool {
        self.background.owns(token)
    }

    /// The server answered background check `token` (`grpc_status` 0) or the call failed. A
    /// token the server says it revoked (`CacheDirective::token_revoked`: it verified it and
    /// the IdP disowns it) is revoked in this worker at once, and the server has revoked it for
    /// every other through the change feed; anything else (a failure, another refusal) changes
    /// nothing: the route's answers stay as they were.
    pub fn on_background_reply(
        &mut self,
        token: u32,
        grpc_status: u32,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) {
        use crate::host::LogLevel;
        use crate::metrics::{Counter, Gauge};
        use authz_core::decision_cache::CachedOutcome;
        let Some(check) = self.background.finished(token) else {
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
        self.revocations.revoke_token(
            authz_core::token_hash::revocation_digest(bearer),
            expires_at_ms,
            now_ms,
        );
        self.host
            .set_gauge(Gauge::Revocations, self.revocations.len() as u64);
        self.host.count(Counter::BackgroundRevoked);
        self.host.log(
            LogLevel::Warn,
            &format!("jwt_authz allowed, then revoked: the server found the token disowned by the IdP and revoked it; refused from now on in every worker {where_}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str) -> BackgroundCheck {
        BackgroundCheck {
            request: OwnedRequest {
                method: "GET".into(),
                path: path.into(),
                authorization: Some("Bearer t".into()),
            },
            route: "read".into(),
            tier: Tier::Authenticated,
            answered_ms: 0,
        }
    }

    #[test]
    fn a_hot_token_is_checked_once_per_window() {
        let mut checks = BackgroundChecks::default();
        assert_eq!(checks.note(1, check("/a?q=1"), 1000, 0), Noted::Queued);
        assert_eq!(checks.note(1, check("/b"), 1000, 999), Noted::NotDue);
        assert_eq!(
            checks.note(2, check("/c"), 1000, 999),
            Noted::Queued,
            "another token"
        );
        assert_eq!(checks.note(1, check("/d"), 1000, 1000), Noted::Queued);
        let taken = checks.take(10_000);
        assert_eq!(taken.len(), 3);
        assert_eq!(taken[0].request.path, "/a", "kept without its query");
        assert!(checks.take(10_000).is_empty());
    }

    #[test]
    fn the_queue_the_rate_and_what_is_kept_are_bounded() {
        let mut checks = BackgroundChecks::default();
        for token in 0..MAX_QUEUED as u128 {
            assert_eq!(checks.note(token, check("/x"), 1000, 0), Noted::Queued);
        }
        let turned_away = MAX_QUEUED as u128 + 5;
        assert_eq!(
            checks.note(turned_away, check("/y"), 1000, 0),
            Noted::Dropped
        );
        assert_eq!(checks.take(100_000).len() as u64, MAX_BURST);
        assert!(checks.take(100_000).is_empty(), "the budget is spent");
        assert_eq!(checks.take(100_250).len(), 16, "64 a second: 16 in 250 ms");
        assert_eq!(checks.take(100_300).len(), 3);
        // A token turned away by a full queue was not marked: it is noted again later.
        assert_eq!(
            checks.note(turned_away, check("/y"), 1000, 1),
            Noted::Queued
        );
        let long = format!("/{}", "é".repeat(MAX_PATH_BYTES));
        checks.note(9_999, check(&long), 1000, 0);
        let kept = checks.queue.back().unwrap();
        assert!(kept.request.path.len() <= MAX_PATH_BYTES);
    }

    #[test]
    fn answers_are_matched_to_their_call_and_lost_calls_forgotten() {
        let mut checks = BackgroundChecks::default();
        checks.note(1, check("/a"), 1000, 0);
        checks.note(2, check("/b"), 1000, 0);
        let mut taken = checks.take(10_000);
        let (first, second) = (taken.remove(0), taken.remove(0));
        checks.started(7, first.clone(), 10_000);
        checks.started(8, second, 10_000);
        assert!(checks.owns(7) && !checks.owns(9));
        assert_eq!(checks.finished(7), Some(first));
        assert!(checks.finished(7).is_none());
        checks.take(10_000 + FORGET_CALL_MS);
        assert!(!checks.owns(8), "never answered: forgotten");
    }
}
