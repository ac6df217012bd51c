//! When to fetch a remote JWKS, shared by every proxy worker.
//!
//! All workers share one [`FetchStatus`] record per key source (the filter keeps it in Envoy
//! shared data and updates it with compare-and-swap). A worker fetches only after it has won
//! the record's lease, so one fetch serves every worker. [`next_fetch`] says whether a fetch
//! is due: the first load (with backoff after failures), the periodic refresh, or an unknown
//! `kid`. Unknown-`kid` fetches draw on a small budget ([`UNKNOWN_KID_BURST`] at once, one more
//! per `min_refetch_interval`): a flood of tokens with random `kid`s cannot become a flood of
//! fetches, and one junk token just before a rotation (or two rotations close together) does
//! not keep the new key out for a whole interval. Failed refreshes keep the last good keys
//! (the filter simply does not replace them); the status only records the failure.
//!
//! An operator's refetch (the `jwks_refetch` incident switch, `crate::switches`) is a demand
//! written into the record ([`FetchStatus::demand_refetch`]: the switch's time, the server's
//! clock): a fetch is due at once (with the failure backoff) until one leased after the
//! demand was known has succeeded ([`FetchStatus::refetch_pending`]). Only times from the
//! switch are compared with each other, never with a local clock.
//!
//! Pure: the clock is the `now_ms` parameter; the record is (de)serialised here, stored by the
//! caller.

use serde::{Deserialize, Serialize};

/// Timing rules for one key source, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshRules {
    pub refresh_interval_ms: u64,
    pub min_refetch_interval_ms: u64,
    /// How long a lease lasts: the fetch timeout plus a margin. A worker that dies mid-fetch
    /// blocks others for at most this long.
    pub lease_ms: u64,
}

/// First retry delay after a failed fetch; doubles per failure up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 500;
/// Longest delay between retries after failures.
pub const MAX_BACKOFF_MS: u64 = 30_000;

/// How a token failed the current keys, when a refetch might change that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// No key carries the token's `kid`: a rotation may have added it.
    UnknownKid,
    /// The key behind the token's `kid` rejects it (signature or key type): the IdP may have
    /// rotated the key under the same `kid`. Any client can forge such a token from a real
    /// one, so it refetches at most once per `min_refetch_interval` after the last refetch a
    /// token caused, without a burst.
    Rejected,
}

/// Unknown-`kid` fetches that may follow each other at once; the budget refills by one per
/// `min_refetch_interval`.
pub const UNKNOWN_KID_BURST: u64 = 3;

/// The shared record of one key source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchStatus {
    /// A fetch is in flight (by someone) until this time.
    pub lease_until_ms: u64,
    /// Last scheduled attempt (initial load, retry, refresh): failures back off from it.
    pub last_attempt_ms: Option<u64>,
    /// Last fetch caused by an unknown `kid`; kept apart so that such fetches (which any
    /// client can cause) never push back the scheduled refresh or its retries.
    #[serde(default)]
    pub last_unknown_kid_ms: Option<u64>,
    /// The unknown-`kid` budget as a theoretical arrival time (GCRA): a fetch is allowed while
    /// it is at most `(UNKNOWN_KID_BURST - 1) * min_refetch_interval` ahead of now.
    #[serde(default)]
    pub unknown_kid_budget_ms: Option<u64>,
    /// `None` until the first successful fetch.
    pub last_success_ms: Option<u64>,
    pub consecutive_failures: u32,
    /// Bumped each time new keys are stored, so workers re-read keys only when it changes.
    pub keys_version: u64,
    /// Bumped each time a fetch ends (success or failure), so waiters know a fetch concluded.
    pub completed_fetches: u64,
    /// The latest refetch an operator asked for (its switch's time; 0: none).
    #[serde(default)]
    pub refetch_wanted_at_ms: u64,
    /// The latest demand a successful fetch has met.
    #[serde(default)]
    pub refetched_at_ms: u64,
}

/// Why a fetch is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    Initial,
    Retry,
    Refresh,
    UnknownKid,
    /// An operator asked for it (the `jwks_refetch` switch).
    Demanded,
}

impl FetchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchReason::Initial => "initial",
            FetchReason::Retry => "retry",
            FetchReason::Refresh => "refresh",
            FetchReason::UnknownKid => "unknown_kid",
            FetchReason::Demanded => "demanded",
        }
    }
}

impl FetchStatus {
    /// Parses a stored record; anything unreadable counts as a fresh record.
    pub fn decode(bytes: Option<&[u8]>) -> FetchStatus {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether some worker holds the lease now.
    pub fn fetch_in_flight(&self, now_ms: u64) -> bool {
        now_ms < self.lease_until_ms
    }

    fn backoff_ms(&self) -> u64 {
        match self.consecutive_failures {
            0 => 0,
            n => FIRST_BACKOFF_MS
                .saturating_mul(1u64 << (n - 1).min(16))
                .min(MAX_BACKOFF_MS),
        }
    }

    /// The record after an operator asked for a refetch at `at_ms` (the switch's time).
    pub fn demand_refetch(&self, at_ms: u64) -> FetchStatus {
        FetchStatus {
            refetch_wanted_at_ms: self.refetch_wanted_at_ms.max(at_ms),
            ..*self
        }
    }

    /// Whether a refetch an operator asked for has not been met yet: the keys held are from
    /// before it.
    pub fn refetch_pending(&self) -> bool {
        self.refetch_wanted_at_ms > self.refetched_at_ms
    }

    /// The record after winning the lease for a fetch of this `reason`.
    pub fn leased(&self, rules: &RefreshRules, now_ms: u64, reason: FetchReason) -> FetchStatus {
        let mut next = FetchStatus {
            lease_until_ms: now_ms + rules.lease_ms,
            ..*self
        };
        if reason == FetchReason::UnknownKid {
            next.last_unknown_kid_ms = Some(now_ms);
            next.unknown_kid_budget_ms = Some(
                self.unknown_kid_budget_ms
                    .unwrap_or(0)
                    .max(now_ms)
                    .saturating_add(rules.min_refetch_interval_ms),
            );
        } else {
            next.last_attempt_ms = Some(now_ms);
        }
        next
    }

    /// The record after a fetch that never got an answer to its worker (the request that
    /// carried it went away): the lease is released, nothing counts as a failure.
    pub fn released(&self) -> FetchStatus {
        FetchStatus {
            lease_until_ms: 0,
            ..*self
        }
    }

    /// The record after a fetch that stored new keys. `met_refetch_at_ms`: the demand the
    /// record held when that fetch was leased (`refetch_wanted_at_ms` of what
    /// [`FetchStatus::leased`] returned), the only one its keys can meet (a fetch leased
    /// earlier may answer after a later lease was taken).
    pub fn succeeded(&self, now_ms: u64, met_refetch_at_ms: u64) -> FetchStatus {
        FetchStatus {
            lease_until_ms: 0,
            last_success_ms: Some(now_ms),
            consecutive_failures: 0,
            keys_version: self.keys_version + 1,
            completed_fetches: self.completed_fetches + 1,
            refetched_at_ms: self.refetched_at_ms.max(met_refetch_at_ms),
            ..*self
        }
    }

    /// The record after a failed fetch (the last good keys stay).
    pub fn failed(&self) -> FetchStatus {
        FetchStatus {
            lease_until_ms: 0,
            consecutive_failures: self.consecutive_failures.saturating_add(1),
            completed_fetches: self.completed_fetches + 1,
            ..*self
        }
    }
}

/// Whether a fetch should start now. `miss` says how a request's token failed the current
/// keys, if it did.
pub fn next_fetch(
    rules: &RefreshRules,
    status: &FetchStatus,
    now_ms: u64,
    miss: Option<KeyMiss>,
) -> Option<FetchReason> {
    if status.fetch_in_flight(now_ms) {
        return None;
    }
    let Some(last_attempt) = status.last_attempt_ms else {
        return Some(FetchReason::Initial);
    };
    let since_attempt = now_ms.saturating_sub(last_attempt);
    let backoff_over = since_attempt >= status.backoff_ms();
    let Some(last_success) = status.last_success_ms else {
        return backoff_over.then_some(FetchReason::Retry);
    };
    if status.refetch_pending() && backoff_over {
        return Some(FetchReason::Demanded);
    }
    if now_ms.saturating_sub(last_success) >= rules.refresh_interval_ms && backoff_over {
        return Some(if status.consecutive_failures > 0 {
            FetchReason::Retry
        } else {
            FetchReason::Refresh
        });
    }
    let slack = (UNKNOWN_KID_BURST - 1).saturating_mul(rules.min_refetch_interval_ms);
    let budget_left = status
        .unknown_kid_budget_ms
        .is_none_or(|at| now_ms.saturating_add(slack) >= at);
    let since_token_refetch = status
        .last_unknown_kid_ms
        .map_or(u64::MAX, |t| now_ms.saturating_sub(t));
    let allowed = match miss {
        None => false,
        Some(KeyMiss::UnknownKid) => budget_left,
        Some(KeyMiss::Rejected) => since_token_refetch >= rules.min_refetch_interval_ms,
    };
    if allowed && backoff_over {
        return Some(FetchReason::UnknownKid);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RULES: RefreshRules = RefreshRules {
        refresh_interval_ms: 60_000,
        min_refetch_interval_ms: 5_000,
        lease_ms: 3_000,
    };

    #[test]
    fn first_load_then_refresh_on_schedule() {
        let s = FetchStatus::default();
        assert_eq!(
            next_fetch(&RULES, &s, 1_000, None),
            Some(FetchReason::Initial)
        );
        let s = s.leased(&RULES, 1_000, FetchReason::Initial);
        assert_eq!(next_fetch(&RULES, &s, 1_500, None), None, "in flight");
        let s = s.succeeded(1_200, 0);
        assert_eq!(s.keys_version, 1);
        assert_eq!(next_fetch(&RULES, &s, 30_000, None), None);
        assert_eq!(
            next_fetch(&RULES, &s, 61_200, None),
            Some(FetchReason::Refresh)
        );
    }

    #[test]
    fn failures_back_off_exponentially_and_keep_trying() {
        let mut s = FetchStatus::default()
            .leased(&RULES, 0, FetchReason::Initial)
            .failed();
        let mut now = 0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            let start = now;
            while next_fetch(&RULES, &s, now, None).is_none() {
                now += 100;
            }
            gaps.push(now - start);
            s = s.leased(&RULES, now, FetchReason::Initial).failed();
        }
        assert_eq!(gaps, vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }

    #[test]
    fn a_lease_that_is_never_released_expires() {
        let s = FetchStatus::default().leased(&RULES, 0, FetchReason::Initial);
        assert_eq!(next_fetch(&RULES, &s, 2_999, None), None);
        assert_eq!(
            next_fetch(&RULES, &s, 3_000, None),
            Some(FetchReason::Retry)
        );
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let s = FetchStatus::default()
            .leased(&RULES, 0, FetchReason::Initial)
            .succeeded(0, 0);
        assert_eq!(
            next_fetch(&RULES, &s, 10, Some(KeyMiss::UnknownKid)),
            Some(FetchReason::UnknownKid)
        );
        // A burst of three (a junk `kid` and two rotations close together), then one per
        // interval.
        let mut s = s;
        for at in [10, 20, 30] {
            assert_eq!(
                next_fetch(&RULES, &s, at, Some(KeyMiss::UnknownKid)),
                Some(FetchReason::UnknownKid)
            );
            s = s
                .leased(&RULES, at, FetchReason::UnknownKid)
                .succeeded(at + 5, 0);
        }
        assert_eq!(next_fetch(&RULES, &s, 40, Some(KeyMiss::UnknownKid)), None);
        assert_eq!(
            next_fetch(&RULES, &s, 5_009, Some(KeyMiss::UnknownKid)),
            None
        );
        assert_eq!(
            next_fetch(&RULES, &s, 5_010, Some(KeyMiss::UnknownKid)),
            Some(FetchReason::UnknownKid)
        );
        let s = s
            .leased(&RULES, 5_010, FetchReason::UnknownKid)
            .succeeded(5_020, 0);
        assert_eq!(
            next_fetch(&RULES, &s, 10_009, Some(KeyMiss::UnknownKid)),
            None
        );
        // Quiet for a while: the whole burst is back.
        let mut s = s;
        for at in [60_000, 60_001, 60_002] {
            assert_eq!(
                next_fetch(&RULES, &s, at, Some(KeyMiss::UnknownKid)),
                Some(FetchReason::UnknownKid)
            );
            s = s.leased(&RULES, at, FetchReason::UnknownKid).released();
        }
        assert_eq!(
            next_fetch(&RULES, &s, 60_003, Some(KeyMiss::UnknownKid)),
            None
        );
    }

    #[test]
    fn a_rejected_signature_refetches_once_per_interval_without_a_burst() {
        let s = FetchStatus::default()
            .leased(&RULES, 0, FetchReason::Initial)
            .succeeded(0, 0);
        assert_eq!(
            next_fetch(&RULES, &s, 10, Some(KeyMiss::Rejected)),
            Some(FetchReason::UnknownKid)
        );
        let s = s
            .leased(&RULES, 10, FetchReason::UnknownKid)
            .succeeded(20, 0);
        assert_eq!(next_fetch(&RULES, &s, 5_009, Some(KeyMiss::Rejected)), None);
        assert_eq!(
            next_fetch(&RULES, &s, 30, Some(KeyMiss::UnknownKid)),
            Some(FetchReason::UnknownKid),
            "an unknown kid still has its budget"
        );
        assert_eq!(
            next_fetch(&RULES, &s, 5_010, Some(KeyMiss::Rejected)),
            Some(FetchReason::UnknownKid)
        );
    }

    #[test]
    fn unknown_kid_fetches_never_push_back_the_schedule() {
        // Keys loaded at 0; unknown kids every 5 s keep failing (IdP down for them).
        let mut s = FetchStatus::default()
            .leased(&RULES, 0, FetchReason::Initial)
            .succeeded(0, 0);
        let mut now = 0;
        while now < RULES.refresh_interval_ms {
            now += 5_000;
            if next_fetch(&RULES, &s, now, Some(KeyMiss::UnknownKid))
                == Some(FetchReason::UnknownKid)
            {
                s = s.leased(&RULES, now, FetchReason::UnknownKid).released();
            }
        }
        // The scheduled refresh is due on time, whatever the unknown kids did.
        assert_eq!(
            next_fetch(&RULES, &s, RULES.refresh_interval_ms, None),
            Some(FetchReason::Refresh)
        );
    }

    #[test]
    fn a_demanded_refetch_is_due_until_a_fetch_leased_after_it_succeeds() {
        let s = FetchStatus::default()
            .leased(&RULES, 0, FetchReason::Initial)
            .succeeded(10, 0);
        assert!(!s.refetch_pending());
        assert_eq!(next_fetch(&RULES, &s, 20, None), None);
        // Asked for while a fetch is in flight: that fetch does not meet it.
        let flying = s.leased(&RULES, 20, FetchReason::UnknownKid);
        let met_by_flying = flying.refetch_wanted_at_ms;
        let flying = flying.demand_refetch(5_000);
        assert_eq!(next_fetch(&RULES, &flying, 21, None), None, "in flight");
        let s = flying.succeeded(30, met_by_flying);
        assert!(s.refetch_pending());
        assert_eq!(
            next_fetch(&RULES, &s, 31, None),
            Some(FetchReason::Demanded)
        );
        // A failure backs off, and the demand stays.
        let s = s.leased(&RULES, 31, FetchReason::Demanded).failed();
        assert!(s.refetch_pending());
        assert_eq!(next_fetch(&RULES, &s, 100, None), None);
        let at = 31 + FIRST_BACKOFF_MS;
        assert_eq!(
            next_fetch(&RULES, &s, at, None),
            Some(FetchReason::Demanded)
        );
        let leased = s.leased(&RULES, at, FetchReason::Demanded);
        let s = leased.succeeded(600, leased.refetch_wanted_at_ms);
        assert!(!s.refetch_pending());
        assert_eq!(next_fetch(&RULES, &s, 700, None), None);
        // An older demand read late changes nothing; a newer one is due again.
        assert!(!s.demand_refetch(4_000).refetch_pending());
        assert!(s.demand_refetch(5_001).refetch_pending());
        // Records written before demands existed read as none.
        let old = FetchStatus::decode(Some(br#"{"lease_until_ms":0,"last_attempt_ms":1,"last_success_ms":1,"consecutive_failures":0,"keys_version":1,"completed_fetches":1}"#));
        assert!(!old.refetch_pending());
    }

    #[test]
    fn a_fetch_leased_before_a_demand_never_meets_it_even_answering_after_a_later_lease() {
        let s = FetchStatus::default()
            .leased(&RULES, 0, FetchReason::Initial)
            .succeeded(10, 0);
        // Worker 1 leases before the demand; its lease lapses; worker 2 leases after it.
        let first = s.leased(&RULES, 20, FetchReason::Refresh);
        let first_meets = first.refetch_wanted_at_ms;
        let demanded = first.demand_refetch(9_000);
        let second = demanded.leased(&RULES, 20 + RULES.lease_ms, FetchReason::Demanded);
        let second_meets = second.refetch_wanted_at_ms;
        // Worker 1's late answer lands first: it meets nothing.
        let s = second.succeeded(5_000, first_meets);
        assert!(s.refetch_pending(), "keys fetched before the demand");
        let s = s.succeeded(5_010, second_meets);
        assert!(!s.refetch_pending());
    }

    #[test]
    fn a_released_lease_is_no_failure() {
        let s = FetchStatus::default().leased(&RULES, 0, FetchReason::Initial);
        let r = s.released();
        assert_eq!(r.consecutive_failures, 0);
        assert!(!r.fetch_in_flight(1));
        assert_eq!(
            next_fetch(&RULES, &r, 1, None),
            Some(FetchReason::Retry),
            "fetched again at once, without backoff"
        );
    }

    #[test]
    fn records_round_trip_and_garbage_reads_as_fresh() {
        let s = FetchStatus {
            keys_version: 3,
            completed_fetches: 4,
            ..FetchStatus::default()
        };
        assert_eq!(FetchStatus::decode(Some(&s.encode())), s);
        assert_eq!(FetchStatus::decode(Some(b"junk")), FetchStatus::default());
        assert_eq!(FetchStatus::decode(None), FetchStatus::default());
    }

    proptest! {
        /// A flood of unknown-kid requests, at any arrival pattern, causes at most one fetch per
        /// `min_refetch_interval` after the first burst (plus scheduled refreshes).
        #[test]
        fn unknown_kid_flood_is_bounded(arrivals in proptest::collection::vec(0u64..200, 1..500)) {
            let mut s = FetchStatus::default().leased(&RULES, 0, FetchReason::Initial).succeeded(0, 0);
            let mut now = 0u64;
            let mut fetches = 0u64;
            for gap in arrivals {
                now += gap;
                if let Some(reason) = next_fetch(&RULES, &s, now, Some(KeyMiss::UnknownKid)) {
                    fetches += 1;
                    s = s.leased(&RULES, now, reason).succeeded(now + 10, 0);
                }
            }
            let bound = now / RULES.min_refetch_interval_ms + UNKNOWN_KID_BURST;
            prop_assert!(fetches <= bound, "{} fetches in {} ms", fetches, now);
        }

        /// While a lease is held nobody else may fetch, whatever the reason.
        #[test]
        fn no_fetch_while_leased(at in 0u64..3_000, kid in any::<bool>(), failures in 0u32..10) {
            let s = FetchStatus { consecutive_failures: failures, ..FetchStatus::default() }.leased(&RULES, 0, FetchReason::Initial);
            prop_assert_eq!(next_fetch(&RULES, &s, at, kid.then_some(KeyMiss::Rejected)), None);
        }
    }
}
