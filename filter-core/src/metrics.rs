//! The filter's metrics, as values the core counts and hosts name. Every host exports the same
//! names (Envoy adds its `wasmcustom.` prefix to a Wasm filter's); [`Counter::all`] lists every
//! counter so a host can define them all (at zero) before the first request, and
//! [`Counter::index`] is a dense index, so a host can keep its ids in a plain array.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `jwt_authz.decision.allow` / `.deny` | counter | final decisions |
//! | `jwt_authz.tier.<tier>.allow` / `.deny` | counter | decisions per tier |
//! | `jwt_authz.deny.<reason>` | counter | denials per reason |
//! | `jwt_authz.jwks.fetch_ok` / `.fetch_failed` | counter | JWKS fetches this worker made |
//! | `jwt_authz.jwks.fetch_unknown_kid` | counter | fetches caused by an unknown `kid` |
//! | `jwt_authz.jwks.unknown_kid_rate_limited` | counter | unknown `kid`s denied without a fetch |
//! | `jwt_authz.requests.waited_for_keys` | counter | requests paused until keys arrived |
//! | `jwt_authz.verify_us` | histogram | time of a JWT verification (token cache miss), microseconds |
//! | `jwt_authz.token_cache.hit` / `.miss` | counter | local JWT verifications reused / done |
//! | `jwt_authz.cache.<tier>.hit` / `.miss` / `.untrusted` / `.evict` | counter | decision cache by tier |
//! | `jwt_authz.cache.entries` | gauge | decision cache entries (this worker; last writer wins) |
//! | `jwt_authz.server.calls` / `.errors` | counter | Check calls to the ext_authz server / failed ones |
//! | `jwt_authz.epochs.poll_ok` / `.poll_failed` | counter | `/admin/epochs` polls |
//! | `jwt_authz.policy_version` | gauge | policy version this worker enforces |

use authz_core::Tier;

/// Every deny reason label (`DenyReason::as_str`), so all counters exist from the start.
pub const DENY_REASONS: [&str; 25] = [
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
}

/// A value the core sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gauge {
    CacheEntries,
    PolicyVersion,
}

/// A distribution the core records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Histogram {
    VerifyMicros,
}

const TIERS: usize = Tier::ALL.len();

/// The counters without a tier or reason, in index order.
const PLAIN: [Counter; 13] = [
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
    pub const COUNT: usize = PLAIN.len() + PER_TIER.len() * TIERS + DENY_REASONS.len();

    /// Every counter, in [`Counter::index`] order.
    pub fn all() -> Vec<Counter> {
        let mut all: Vec<Counter> = PLAIN.to_vec();
        for family in PER_TIER {
            all.extend(Tier::ALL.iter().map(|t| family(*t)));
        }
        all.extend(DENY_REASONS.iter().map(|r| Counter::DenyReason(r)));
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
            plain => PLAIN.iter().position(|p| p == plain)?,
        })
    }

    /// The metric's name.
    pub fn name(&self) -> String {
        match self {
            Counter::DecisionAllow => "jwt_authz.decision.allow".into(),
            Counter::DecisionDeny => "jwt_authz.decision.deny".into(),
            Counter::TierAllow(t) => format!("jwt_authz.tier.{t}.allow"),
            Counter::TierDeny(t) => format!("jwt_authz.tier.{t}.deny"),
            Counter::DenyReason(r) => format!("jwt_authz.deny.{r}"),
            Counter::JwksFetchOk => "jwt_authz.jwks.fetch_ok".into(),
            Counter::JwksFetchFailed => "jwt_authz.jwks.fetch_failed".into(),
            Counter::JwksFetchUnknownKid => "jwt_authz.jwks.fetch_unknown_kid".into(),
            Counter::UnknownKidRateLimited => "jwt_authz.jwks.unknown_kid_rate_limited".into(),
            Counter::WaitedForKeys => "jwt_authz.requests.waited_for_keys".into(),
            Counter::TokenCacheHit => "jwt_authz.token_cache.hit".into(),
            Counter::TokenCacheMiss => "jwt_authz.token_cache.miss".into(),
            Counter::CacheHit(t) => format!("jwt_authz.cache.{t}.hit"),
            Counter::CacheMiss(t) => format!("jwt_authz.cache.{t}.miss"),
            Counter::CacheUntrusted(t) => format!("jwt_authz.cache.{t}.untrusted"),
            Counter::CacheEvict(t) => format!("jwt_authz.cache.{t}.evict"),
            Counter::ServerCalls => "jwt_authz.server.calls".into(),
            Counter::ServerErrors => "jwt_authz.server.errors".into(),
            Counter::PollOk => "jwt_authz.epochs.poll_ok".into(),
            Counter::PollFailed => "jwt_authz.epochs.poll_failed".into(),
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
    pub const ALL: [Gauge; 2] = [Gauge::CacheEntries, Gauge::PolicyVersion];

    pub fn name(&self) -> &'static str {
        match self {
            Gauge::CacheEntries => "jwt_authz.cache.entries",
            Gauge::PolicyVersion => "jwt_authz.policy_version",
        }
    }
}

impl Histogram {
    pub const ALL: [Histogram; 1] = [Histogram::VerifyMicros];

    pub fn name(&self) -> &'static str {
        match self {
            Histogram::VerifyMicros => "jwt_authz.verify_us",
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
            VerifyFailure::AlgorithmKeyMismatch,
            VerifyFailure::BadSignature,
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
        ]);
        for r in reasons {
            assert!(DENY_REASONS.contains(&r.as_str()), "{r:?}");
        }
    }
}
