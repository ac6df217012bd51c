//! Checks after the answer (`background_check_ms`): which allowed requests of an opted-in route
//! the server should look at, and when.
//!
//! A token is checked at most once per its route's window (a hot token costs one check per
//! window, not one per request), the checks waiting to go are bounded, and at most
//! [`MAX_PER_TICK`] leave per tick: past that, checks wait or are dropped (never a denial). The
//! worker turns a refusal into a revocation; a failure changes nothing.
//!
//! What it does not do: decide, or send anything (the worker's `after_answer` sends what
//! [`take`] hands out, on wake-ups, so the host makes the calls from where it wakes, which
//! outlives the request: that one has been answered already).
//!
//! [`take`]: BackgroundChecks::take

use crate::commands::{BackgroundCheck, CallId};
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
    /// Sent: call → the check and when it left (ms).
    in_flight: HashMap<CallId, (BackgroundCheck, u64)>,
    /// Checks that may leave now (a budget refilled at [`MAX_PER_SECOND`], up to
    /// [`MAX_BURST`]), in thousandths of a check.
    budget_millis: u64,
    budget_at_ms: u64,
    /// Whether any route is checked after the answer (else allows skip the bookkeeping).
    enabled: bool,
}

impl BackgroundChecks {
    /// The checks of a policy where some route is checked after the answer (`enabled`), or
    /// none is.
    pub fn new(enabled: bool) -> BackgroundChecks {
        BackgroundChecks {
            enabled,
            ..BackgroundChecks::default()
        }
    }

    /// Whether some route of the policy enforced now is checked after the answer (a promoted
    /// route policy may add or remove such routes).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

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

    /// When the next queued check may leave (ms): `None` with none queued.
    pub fn due_at(&self) -> Option<u64> {
        if self.queue.is_empty() {
            return None;
        }
        let missing = 1000u64.saturating_sub(self.budget_millis);
        Some(self.budget_at_ms + missing.div_ceil(MAX_PER_SECOND))
    }

    /// `check` left as `call` at `now_ms`.
    pub fn started(&mut self, call: CallId, check: BackgroundCheck, now_ms: u64) {
        self.in_flight.insert(call, (check, now_ms));
    }

    /// Whether `call` is a background check's.
    pub fn owns(&self, call: CallId) -> bool {
        self.in_flight.contains_key(&call)
    }

    /// Check `call` answered (or failed).
    pub fn finished(&mut self, call: CallId) -> Option<BackgroundCheck> {
        self.in_flight.remove(&call).map(|(check, _)| check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::OwnedRequest;
    use authz_core::Tier;

    fn check(path: &str) -> BackgroundCheck {
        BackgroundCheck {
            request: OwnedRequest {
                method: "GET".into(),
                path: path.into(),
                authorization: Some("Bearer t".into()),
                trace_id: None,
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
        // The next may leave when the budget holds one check again: 0.8 of one at 64 a second.
        assert_eq!(checks.due_at(), Some(100_313));
        assert!(checks.take(100_312).is_empty());
        assert_eq!(checks.take(100_313).len(), 1);
        assert_eq!(BackgroundChecks::default().due_at(), None, "none queued");
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
        checks.started(CallId(7), first.clone(), 10_000);
        checks.started(CallId(8), second, 10_000);
        assert!(checks.owns(CallId(7)) && !checks.owns(CallId(9)));
        assert_eq!(checks.finished(CallId(7)), Some(first));
        assert!(checks.finished(CallId(7)).is_none());
        checks.take(10_000 + FORGET_CALL_MS);
        assert!(!checks.owns(CallId(8)), "never answered: forgotten");
    }
}
