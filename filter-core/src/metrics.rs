//! The filter's metrics, as values the core counts and hosts name. Every host exports the same
//! names (Envoy adds its `wasmcustom.` prefix to a Wasm filter's); [`Counter::all`] lists every
//! counter so a host can define them all (at zero) before the first request, and
//! [`Counter::index`] is a dense index, so a host can keep its ids in a plain array.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `authz.decisions.allow` / `.deny` | counter | final decisions |
//! | `authz.decisions.tier.<tier>.allow` / `.deny` | counter | decisions per tier |
//! | `authz.decisions.reason.<reason>` | counter | denials per reason |
//! | `authz.jwks_fetches.ok` / `.failed` | counter | JWKS fetches this worker made |
//! | `authz.jwks_fetches.unknown_kid` | counter | fetches caused by a token the loaded keys fail (unknown `kid`, or a signature or key type no key with its `kid` matches: a rotation) |
//! | `authz.jwks_unknown_kids_rate_limited` | counter | such tokens denied without a fetch (the budget: 3 at once, then one per `min_refetch_interval`) |
//! | `authz.requests_waited_for_keys` | counter | requests paused until keys arrived |
//! | `authz.verify_microseconds` | histogram | time of a JWT verification (token cache miss), microseconds |
//! | `authz.token_cache_lookups.hit` / `.miss` | counter | local JWT verifications reused / done |
//! | `authz.cache_lookups.<tier>.hit` / `.miss` / `.untrusted` | counter | decision cache lookups by tier |
//! | `authz.cache_evictions.<tier>` | counter | decision cache entries evicted by tier |
//! | `authz.cache_entries` | gauge | decision cache entries (this worker; last writer wins) |
//! | `authz.check_calls` / `authz.check_call_errors` | counter | Check calls to the ext_authz server asked for / failed or not started |
//! | `authz.epochs_polls.ok` / `.failed` | counter | `/admin/epochs` polls |
//! | `authz.epochs_polls.held` | counter | change-feed requests the server held open until a change or its wait ran out (push) |
//! | `authz.policy_version` | gauge | policy version this worker enforces |
//! | `authz.revocations` | gauge | revocations this worker holds for locally decided routes (last writer wins) |
//! | `authz.revocations_dropped` | counter | revocations dropped at `server.max_revocations` (writes fail closed until they would have expired) |
//! | `authz.push_connected` | gauge | 1 while this worker's change feed is pushed (a held request succeeded last), 0 while it polls (last writer wins) |
//! | `authz.contexts.signed` / `.reused` | counter | signed verification contexts this worker made / reused for a token, method and route |
//! | `authz.background_checks.sent` / `.revoked` / `.failed` / `.dropped` | counter | checks after the answer (`background_check_ms`) asked for / whose token the server revoked ("allowed, then revoked") / that failed or answered otherwise (nothing changed) / due but dropped (queue full) |
//! | `authz.switches.flushes` / `.jwks_refetches` | counter | incident switches this worker acted on: caches dropped / key sets held back until fetched again |
//! | `authz.switches.unreadable` | counter | feed answers whose switches could not be read (the worker then assumes every tier fails closed and checks after the answer are made before it) |
//! | `authz.switches_on` | gauge | incident switches on (cache caps, fail-closed tiers, async verification off), as this worker last saw them (last writer wins) |
//! | `authz.check_call_ms` | histogram | a Check call made for a request: asked → answered or failed, ms (the filter's clock: ms ticks) |
//! | `authz.key_wait_ms` | histogram | a request paused for keys: paused → decided, ms |
//! | `authz.canary.compared` | counter | requests this worker decided by the active and the candidate route policy (a canary's sample of the requests it decides locally) |
//! | `authz.canary.disagreements.<kind>` | counter | of those, where the candidate disagreed: `candidate_denies`, `candidate_allows`, `other_denial`, `tier` (see `authz_core::canary::Disagreement`) |
//! | `authz.canary.refused` | counter | candidate or promoted route policies this worker could not apply (its log says why) |
//! | `authz.revocation_lag_ms` | histogram | from the server learning a change to this worker applying it, ms (one sample per change; same clock only on one machine) |

use authz_core::canary::Disagreement;
use authz_core::Tier;

/// Every deny reason label (`DenyReason::as_str`), so all counters exist from the start.
pub const DENY_REASONS: [&str; 27] = [
    "server_deny",
    "missing_token",
    "not_bearer",
    "insufficient_scope",
    "claim_mismatch",
    "tenant_mismatch",
    "keys_unavailable",
    "server_required",
    "too_large",
    "malformed",
    "alg_none",
    "unsupported_alg",
    "crit_header",
    "unknown_issuer",
    "unknown_kid",
    "alg_key_mismatch",
    "bad_signature",
    "wrong_typ",
    "missing_exp",
    "expired",
    "not_yet_valid",
    "iat_in_future",
    "wrong_audience",
    "internal",
    "bad_request",
    "revoked",
    "revocations_incomplete",
];

/// A counter the core increments by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    DecisionAllow,
    DecisionDeny,
    TierAllow(Tier),
    TierDeny(Tier),
    /// A [`DENY_REASONS`] label; unknown labels are not counted.
    DenyReason(&'static str),
    JwksFetchOk,
    JwksFetchFailed,
    JwksFetchUnknownKid,
    UnknownKidRateLimited,
    WaitedForKeys,
    TokenCacheHit,
    TokenCacheMiss,
    CacheHit(Tier),
    CacheMiss(Tier),
    CacheUntrusted(Tier),
    CacheEvict(Tier),
    ServerCalls,
    ServerErrors,
    PollOk,
    PollFailed,
    PollHeld,
    /// The server refused the feed credential (401/403).
    PollUnauthorized,
    RevocationsDropped,
    /// A verification context signed / one reused.
    ContextSigned,
    ContextReused,
    /// Background checks dispatched / that refused the token ("allowed, then revoked") /
    /// that failed or answered otherwise (nothing changed).
    BackgroundChecks,
    BackgroundRevoked,
    BackgroundFailed,
    /// A due background check dropped: the queue was full.
    BackgroundDropped,
    /// Incident switches acted on: a flush, a key refetch; switches that could not be read.
    SwitchFlush,
    SwitchJwksRefetch,
    SwitchesUnreadable,
    /// A request decided by both route policies of a canary; one where they disagreed; a
    /// candidate or promoted route policy that could not be applied.
    CanaryCompared,
    CanaryDisagreement(Disagreement),
    CanaryRefused,
}

/// A value the core sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gauge {
    CacheEntries,
    PolicyVersion,
    Revocations,
    PushConnected,
    SwitchesOn,
}

/// A distribution the core records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Histogram {
    VerifyMicros,
    RevocationLagMs,
    /// A Check call the filter made for a request: asked → answered (or failed), ms.
    CheckCallMs,
    /// A request paused for keys: paused → decided, ms.
    KeyWaitMs,
}

const TIERS: usize = Tier::ALL.len();

/// The counters without a tier or reason, in index order.
const PLAIN: [Counter; 27] = [
    Counter::DecisionAllow,
    Counter::DecisionDeny,
    Counter::JwksFetchOk,
    Counter::JwksFetchFailed,
    Counter::JwksFetchUnknownKid,
    Counter::UnknownKidRateLimited,
    Counter::WaitedForKeys,
    Counter::TokenCacheHit,
    Counter::TokenCacheMiss,
    Counter::ServerCalls,
    Counter::ServerErrors,
    Counter::PollOk,
    Counter::PollFailed,
    Counter::PollHeld,
    Counter::PollUnauthorized,
    Counter::RevocationsDropped,
    Counter::ContextSigned,
    Counter::ContextReused,
    Counter::BackgroundChecks,
    Counter::BackgroundRevoked,
    Counter::BackgroundFailed,
    Counter::BackgroundDropped,
    Counter::SwitchFlush,
    Counter::SwitchJwksRefetch,
    Counter::SwitchesUnreadable,
    Counter::CanaryCompared,
    Counter::CanaryRefused,
];

/// The per-tier counter families, in index order.
const PER_TIER: [fn(Tier) -> Counter; 6] = [
    Counter::TierAllow,
    Counter::TierDeny,
    Counter::CacheHit,
    Counter::CacheMiss,
    Counter::CacheUntrusted,
    Counter::CacheEvict,
];

impl Counter {
    /// How many counters there are ([`Counter::index`] is below this).
    pub const COUNT: usize =
        PLAIN.len() + PER_TIER.len() * TIERS + DENY_REASONS.len() + Disagreement::ALL.len();

    /// Every counter, in [`Counter::index`] order.
    pub fn all() -> Vec<Counter> {
        let mut all: Vec<Counter> = PLAIN.to_vec();
        for family in PER_TIER {
            all.extend(Tier::ALL.iter().map(|t| family(*t)));
        }
        all.extend(DENY_REASONS.iter().map(|r| Counter::DenyReason(r)));
        all.extend(Disagreement::ALL.map(Counter::CanaryDisagreement));
        all
    }

    /// A dense index in `0..COUNT`; `None` only for a deny reason not in [`DENY_REASONS`].
    pub fn index(&self) -> Option<usize> {
        let tiered = |family: usize, tier: &Tier| PLAIN.len() + family * TIERS + *tier as usize;
        Some(match self {
            Counter::TierAllow(t) => tiered(0, t),
            Counter::TierDeny(t) => tiered(1, t),
            Counter::CacheHit(t) => tiered(2, t),
            Counter::CacheMiss(t) => tiered(3, t),
            Counter::CacheUntrusted(t) => tiered(4, t),
            Counter::CacheEvict(t) => tiered(5, t),
            Counter::DenyReason(r) => {
                PLAIN.len() + PER_TIER.len() * TIERS + DENY_REASONS.iter().position(|x| x == r)?
            }
            Counter::CanaryDisagreement(kind) => {
                PLAIN.len()
                    + PER_TIER.len() * TIERS
                    + DENY_REASONS.len()
                    + Disagreement::ALL.iter().position(|k| k == kind)?
            }
            plain => PLAIN.iter().position(|p| p == plain)?,
        })
    }

    /// The metric's name.
    pub fn name(&self) -> String {
        match self {
            Counter::DecisionAllow => "authz.decisions.allow".into(),
            Counter::DecisionDeny => "authz.decisions.deny".into(),
            Counter::TierAllow(t) => format!("authz.decisions.tier.{t}.allow"),
            Counter::TierDeny(t) => format!("authz.decisions.tier.{t}.deny"),
            Counter::DenyReason(r) => format!("authz.decisions.reason.{r}"),
            Counter::JwksFetchOk => "authz.jwks_fetches.ok".into(),
            Counter::JwksFetchFailed => "authz.jwks_fetches.failed".into(),
            Counter::JwksFetchUnknownKid => "authz.jwks_fetches.unknown_kid".into(),
            Counter::UnknownKidRateLimited => "authz.jwks_unknown_kids_rate_limited".into(),
            Counter::WaitedForKeys => "authz.requests_waited_for_keys".into(),
            Counter::TokenCacheHit => "authz.token_cache_lookups.hit".into(),
            Counter::TokenCacheMiss => "authz.token_cache_lookups.miss".into(),
            Counter::CacheHit(t) => format!("authz.cache_lookups.{t}.hit"),
            Counter::CacheMiss(t) => format!("authz.cache_lookups.{t}.miss"),
            Counter::CacheUntrusted(t) => format!("authz.cache_lookups.{t}.untrusted"),
            Counter::CacheEvict(t) => format!("authz.cache_evictions.{t}"),
            Counter::ServerCalls => "authz.check_calls".into(),
            Counter::ServerErrors => "authz.check_call_errors".into(),
            Counter::PollOk => "authz.epochs_polls.ok".into(),
            Counter::PollFailed => "authz.epochs_polls.failed".into(),
            Counter::PollHeld => "authz.epochs_polls.held".into(),
            Counter::PollUnauthorized => "authz.epochs_polls.unauthorized".into(),
            Counter::RevocationsDropped => "authz.revocations_dropped".into(),
            Counter::ContextSigned => "authz.contexts.signed".into(),
            Counter::ContextReused => "authz.contexts.reused".into(),
            Counter::BackgroundChecks => "authz.background_checks.sent".into(),
            Counter::BackgroundRevoked => "authz.background_checks.revoked".into(),
            Counter::BackgroundFailed => "authz.background_checks.failed".into(),
            Counter::BackgroundDropped => "authz.background_checks.dropped".into(),
            Counter::SwitchFlush => "authz.switches.flushes".into(),
            Counter::SwitchJwksRefetch => "authz.switches.jwks_refetches".into(),
            Counter::SwitchesUnreadable => "authz.switches.unreadable".into(),
            Counter::CanaryCompared => "authz.canary.compared".into(),
            Counter::CanaryDisagreement(kind) => {
                format!("authz.canary.disagreements.{}", kind.as_str())
            }
            Counter::CanaryRefused => "authz.canary.refused".into(),
        }
    }

    /// Counted on every allowed request: a host may batch these (the proxy-wasm host adds
    /// them to Envoy's counters once per tick instead of once per request).
    pub fn is_hot(&self) -> bool {
        matches!(
            self,
            Counter::DecisionAllow | Counter::TierAllow(_) | Counter::TokenCacheHit
        )
    }
}

impl Gauge {
    pub const ALL: [Gauge; 5] = [
        Gauge::CacheEntries,
        Gauge::PolicyVersion,
        Gauge::Revocations,
        Gauge::PushConnected,
        Gauge::SwitchesOn,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Gauge::CacheEntries => "authz.cache_entries",
            Gauge::PolicyVersion => "authz.policy_version",
            Gauge::Revocations => "authz.revocations",
            Gauge::PushConnected => "authz.push_connected",
            Gauge::SwitchesOn => "authz.switches_on",
        }
    }
}

impl Histogram {
    pub const ALL: [Histogram; 4] = [
        Histogram::VerifyMicros,
        Histogram::RevocationLagMs,
        Histogram::CheckCallMs,
        Histogram::KeyWaitMs,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Histogram::VerifyMicros => "authz.verify_microseconds",
            Histogram::RevocationLagMs => "authz.revocation_lag_ms",
            Histogram::CheckCallMs => "authz.check_call_ms",
            Histogram::KeyWaitMs => "authz.key_wait_ms",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_core::{DenyReason, VerifyFailure};
    use std::collections::HashSet;

    #[test]
    fn indexes_are_dense_and_names_unique() {
        let all = Counter::all();
        assert_eq!(all.len(), Counter::COUNT);
        for (i, counter) in all.iter().enumerate() {
            assert_eq!(counter.index(), Some(i), "{counter:?}");
        }
        let names: HashSet<String> = all.iter().map(Counter::name).collect();
        assert_eq!(names.len(), all.len());
        assert_eq!(Counter::DenyReason("no_such_reason").index(), None);
    }

    #[test]
    fn every_reason_label_has_a_counter() {
        let failures = [
            VerifyFailure::TooLarge,
            VerifyFailure::Malformed("x"),
            VerifyFailure::AlgNone,
            VerifyFailure::UnsupportedAlgorithm,
            VerifyFailure::CriticalHeader,
            VerifyFailure::UnknownIssuer,
            VerifyFailure::KeysUnavailable { provider: 0 },
            VerifyFailure::UnknownKey {
                provider: 0,
                kid: String::new(),
            },
            VerifyFailure::AlgorithmKeyMismatch { provider: 0 },
            VerifyFailure::BadSignature { provider: 0 },
            VerifyFailure::WrongType,
            VerifyFailure::MissingExpiration,
            VerifyFailure::Expired,
            VerifyFailure::NotYetValid,
            VerifyFailure::IssuedInFuture,
            VerifyFailure::WrongAudience,
        ];
        let mut reasons: Vec<DenyReason> = failures.into_iter().map(DenyReason::Token).collect();
        reasons.extend([
            DenyReason::MissingToken,
            DenyReason::NotBearer,
            DenyReason::InsufficientScope,
            DenyReason::ClaimMismatch,
            DenyReason::TenantMismatch,
            DenyReason::KeysUnavailable,
            DenyReason::ServerRequired,
            DenyReason::Internal,
            DenyReason::BadRequest,
            DenyReason::Revoked,
            DenyReason::RevocationsIncomplete,
        ]);
        for r in reasons {
            assert!(DENY_REASONS.contains(&r.as_str()), "{r:?}");
        }
    }
}
