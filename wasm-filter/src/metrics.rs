//! The filter's metrics, defined once per VM and visible in Envoy's `/stats` (Envoy adds its
//! `wasmcustom.` prefix). Names are fixed at definition time; labels are part of the name.
//!
//! The counters every allowed hot request touches (`decision.allow`, `tier.<tier>.allow`,
//! `token_cache.hit`) are counted inside the VM and added to Envoy's counters on the worker's
//! next tick (≤ 250 ms later): one host call per counter per tick instead of three per request.
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

use crate::host;
use authz_core::Tier;
use proxy_wasm::types::MetricType;
use std::cell::Cell;
use std::collections::HashMap;

/// Hot-path counts not yet added to Envoy's counters.
#[derive(Debug, Default)]
pub struct Batched {
    allow: Cell<u64>,
    tier_allow: [Cell<u64>; 5],
    token_cache_hits: Cell<u64>,
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

fn add(metric: Option<u32>, cell: &Cell<u64>) {
    let n = cell.replace(0);
    if n > 0 {
        host::increment_by(metric, n);
    }
}

/// Every deny reason label, so all counters exist (at zero) from the start.
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

/// Metric ids of one VM.
#[derive(Debug, Default)]
pub struct Metrics {
    pub allow: Option<u32>,
    pub deny: Option<u32>,
    pub tier_allow: HashMap<Tier, Option<u32>>,
    pub tier_deny: HashMap<Tier, Option<u32>>,
    pub deny_reason: HashMap<&'static str, Option<u32>>,
    pub jwks_fetch_ok: Option<u32>,
    pub jwks_fetch_failed: Option<u32>,
    pub jwks_fetch_unknown_kid: Option<u32>,
    pub unknown_kid_rate_limited: Option<u32>,
    pub waited_for_keys: Option<u32>,
    pub verify_us: Option<u32>,
    pub token_cache_hits: Option<u32>,
    pub token_cache_misses: Option<u32>,
    pub cache_hit: HashMap<Tier, Option<u32>>,
    pub cache_miss: HashMap<Tier, Option<u32>>,
    pub cache_untrusted: HashMap<Tier, Option<u32>>,
    pub cache_evict: HashMap<Tier, Option<u32>>,
    pub cache_entries: Option<u32>,
    pub server_calls: Option<u32>,
    pub server_errors: Option<u32>,
    pub polls_ok: Option<u32>,
    pub polls_failed: Option<u32>,
    pub policy_version: Option<u32>,
    batched: Batched,
}

fn counter(name: &str) -> Option<u32> {
    host::define_metric(MetricType::Counter, name)
}

impl Metrics {
    pub fn define() -> Metrics {
        let mut m = Metrics {
            allow: counter("jwt_authz.decision.allow"),
            deny: counter("jwt_authz.decision.deny"),
            jwks_fetch_ok: counter("jwt_authz.jwks.fetch_ok"),
            jwks_fetch_failed: counter("jwt_authz.jwks.fetch_failed"),
            jwks_fetch_unknown_kid: counter("jwt_authz.jwks.fetch_unknown_kid"),
            unknown_kid_rate_limited: counter("jwt_authz.jwks.unknown_kid_rate_limited"),
            waited_for_keys: counter("jwt_authz.requests.waited_for_keys"),
            verify_us: host::define_metric(MetricType::Histogram, "jwt_authz.verify_us"),
            ..Metrics::default()
        };
        m.token_cache_hits = counter("jwt_authz.token_cache.hit");
        m.token_cache_misses = counter("jwt_authz.token_cache.miss");
        m.cache_entries = host::define_metric(MetricType::Gauge, "jwt_authz.cache.entries");
        m.server_calls = counter("jwt_authz.server.calls");
        m.server_errors = counter("jwt_authz.server.errors");
        m.polls_ok = counter("jwt_authz.epochs.poll_ok");
        m.polls_failed = counter("jwt_authz.epochs.poll_failed");
        m.policy_version = host::define_metric(MetricType::Gauge, "jwt_authz.policy_version");
        for tier in Tier::ALL {
            m.cache_hit
                .insert(tier, counter(&format!("jwt_authz.cache.{tier}.hit")));
            m.cache_miss
                .insert(tier, counter(&format!("jwt_authz.cache.{tier}.miss")));
            m.cache_untrusted
                .insert(tier, counter(&format!("jwt_authz.cache.{tier}.untrusted")));
            m.cache_evict
                .insert(tier, counter(&format!("jwt_authz.cache.{tier}.evict")));
            m.tier_allow
                .insert(tier, counter(&format!("jwt_authz.tier.{tier}.allow")));
            m.tier_deny
                .insert(tier, counter(&format!("jwt_authz.tier.{tier}.deny")));
        }
        for reason in DENY_REASONS {
            m.deny_reason
                .insert(reason, counter(&format!("jwt_authz.deny.{reason}")));
        }
        m
    }

    pub fn count_allow(&self, tier: Tier) {
        bump(&self.batched.allow);
        if let Some(cell) = self.batched.tier_allow.get(tier as usize) {
            bump(cell);
        }
    }

    pub fn count_token_cache_hit(&self) {
        bump(&self.batched.token_cache_hits);
    }

    /// Adds the batched hot-path counts to Envoy's counters (every tick).
    pub fn flush(&self) {
        add(self.allow, &self.batched.allow);
        add(self.token_cache_hits, &self.batched.token_cache_hits);
        for tier in Tier::ALL {
            if let Some(cell) = self.batched.tier_allow.get(tier as usize) {
                add(self.tier_allow.get(&tier).copied().flatten(), cell);
            }
        }
    }

    /// Increments a per-tier counter.
    pub fn tier_counter(map: &HashMap<Tier, Option<u32>>, tier: Tier) {
        host::increment(map.get(&tier).copied().flatten());
    }

    pub fn count_deny(&self, tier: Tier, reason: &str) {
        host::increment(self.deny);
        host::increment(self.tier_deny.get(&tier).copied().flatten());
        host::increment(self.deny_reason.get(reason).copied().flatten());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_core::{DenyReason, VerifyFailure};

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
        ]);
        for r in reasons {
            assert!(DENY_REASONS.contains(&r.as_str()), "{r:?}");
        }
    }
}
