//! The filter's metrics, as values the core counts and hosts name. Every host exports the same
//! names (Envoy prefixes a Wasm filter's with `wasmcustom.`, a dynamic module's with
//! `dynamicmodulescustom.`); [`Counter::all`] lists every counter so a host can define them all
//! (at zero) before the first request, and [`Counter::index`] / [`Histogram::index`] are dense,
//! so a host can keep its ids in a plain array.
//!
//! **One naming scheme with the server** (Prometheus conventions): a family name with its unit
//! (`_total` for counters, `_microseconds` for durations: Envoy histograms hold integers, the
//! server's are `_seconds`), and dimensions as labels with the server's label names and values
//! (`outcome`, `tier`, `reason`, `stage`, `result`, `kind`). Envoy names a stat with dots, so a
//! label is a `.name.value` pair after the family: `authz_proxy.decisions_total.outcome.deny.
//! tier.privileged.reason.expired`; the `stats_tags` of [`STATS_TAGS`] (in every Envoy config
//! we render) turn those pairs into Prometheus labels, so `/stats/prometheus` shows
//! `authz_proxy_decisions_total{outcome="deny",tier="privileged",reason="expired"}`. The
//! filter's families start with `authz_proxy_` so that they never add up with the server's
//! (`authz_decisions_total` counts what the server decided; the filter's count every request it
//! saw, those it asked the server about included).
//!
//! | family | type | labels | meaning |
//! |---|---|---|---|
//! | `authz_proxy_decisions_total` | counter | `outcome`, `tier`, `reason` (`ok` for allows) | final decisions |
//! | `authz_proxy_decision_microseconds` | histogram | `outcome`, `tier` | request seen → decided, for one request in [`TIMED_EVERY`] (by count: an unbiased sample; `_count` is not a request rate) |
//! | `authz_proxy_check_microseconds` | histogram | `stage`: `token_parse`, `token_cache`, `jwt_verify`, `cache_lookup`, `check_call`, `key_wait` | time per stage: `jwt_verify` (a verification, token cache miss), `check_call` (a Check call: asked → answered or failed) and `key_wait` (paused for keys → decided) always; the sub-microsecond lookups on timed requests only (as above) |
//! | `authz_proxy_jwks_fetches_total` | counter | `result`: `ok`, `failed` | JWKS fetches this worker made |
//! | `authz_proxy_jwks_unknown_kid_fetches_total` | counter | | fetches caused by a token the loaded keys fail (unknown `kid`, or a signature or key type no key with its `kid` matches: a rotation) |
//! | `authz_proxy_jwks_unknown_kids_rate_limited_total` | counter | | such tokens denied without a fetch (the budget: 3 at once, then one per `min_refetch_interval`) |
//! | `authz_proxy_requests_waited_for_keys_total` | counter | | requests paused until keys arrived |
//! | `authz_proxy_token_cache_lookups_total` | counter | `result`: `hit`, `miss` | local JWT verifications reused / done |
//! | `authz_proxy_cache_lookups_total` | counter | `tier`, `result`: `hit`, `miss`, `untrusted` | decision cache lookups |
//! | `authz_proxy_cache_evictions_total` | counter | `tier` | decision cache entries evicted |
//! | `authz_proxy_cache_entries` | gauge | | decision cache entries (this worker; last writer wins) |
//! | `authz_proxy_check_calls_total` / `authz_proxy_check_call_errors_total` | counter | | Check calls to the ext_authz server asked for / failed or not started |
//! | `authz_proxy_feed_polls_total` | counter | `result`: `ok`, `failed`, `held`, `unauthorized` | change-feed (`/admin/epochs`) requests: answered / failed / held open until a change or the wait ran out (push) / refused our credential |
//! | `authz_proxy_policy_version` | gauge | | policy version this worker enforces |
//! | `authz_proxy_revocations` | gauge | | revocations this worker holds for locally decided routes (last writer wins) |
//! | `authz_proxy_revocations_dropped_total` | counter | | revocations dropped at `server.max_revocations` (writes fail closed until they would have expired) |
//! | `authz_proxy_revocation_lag_microseconds` | histogram | | from the server learning a change to this worker applying it (one sample per change; same clock only on one machine) |
//! | `authz_proxy_push_connected` | gauge | | 1 while this worker's change feed is pushed (a held request succeeded last), 0 while it polls (last writer wins) |
//! | `authz_proxy_contexts_total` | counter | `result`: `signed`, `reused` | signed verification contexts this worker made / reused for a token, method and route |
//! | `authz_proxy_background_checks_total` | counter | `result`: `sent`, `revoked`, `failed`, `dropped` | checks after the answer (`background_check_ms`) asked for / whose token the server revoked ("allowed, then revoked") / that failed or answered otherwise (nothing changed) / due but dropped (queue full) |
//! | `authz_proxy_switch_actions_total` | counter | `action`: `flush`, `jwks_refetch` | incident switches this worker acted on: caches dropped / key sets held back until fetched again |
//! | `authz_proxy_switches_unreadable_total` | counter | | feed answers whose switches could not be read (the worker then assumes every tier fails closed and checks after the answer are made before it) |
//! | `authz_proxy_switches_on` | gauge | | incident switches on (cache caps, fail-closed tiers, async verification off), as this worker last saw them (last writer wins) |
//! | `authz_proxy_canary_compared_total` | counter | | requests this worker decided by the active and the candidate route policy (a canary's sample of the requests it decides locally) |
//! | `authz_proxy_canary_disagreements_total` | counter | `kind`: `candidate_denies`, `candidate_allows`, `other_denial`, `tier` | of those, where the candidate disagreed (see `authz_core::canary::Disagreement`) |
//! | `authz_proxy_canary_refused_total` | counter | | candidate or promoted route policies this worker could not apply (its log says why) |

use authz_core::canary::Disagreement;
use authz_core::Tier;

/// Every deny reason label (`DenyReason::as_str`), so all counters exist from the start.
pub const DENY_REASONS: [&str; 29] = [
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
    "lifetime_too_long",
    // Any reason missing above (counted, never dropped).
    "other",
];

/// The namespace of every filter metric (Envoy adds its own prefix before it).
pub const NAMESPACE: &str = "authz_proxy";

/// One request in this many (by count, per worker) is timed: its decision latency and the
/// sub-microsecond stages. The hot path makes no clock read and no histogram write for the
/// others; the stages that take time (a verification, a Check call, a wait for keys) are
/// timed for every request.
pub const TIMED_EVERY: u64 = 16;

/// Envoy `stats_tags` (`stats_config` of the bootstrap): for each label name, the regex that
/// takes its `.name.value` pair out of a filter stat's name and makes it a tag. Rendered into
/// every Envoy config (`authz-config`, `envoy/*.yaml`); a stat's pairs follow its family, and
/// values are `\w+`, so a pair is only ever matched where a pair starts.
pub fn stats_tags() -> Vec<(&'static str, String)> {
    LABELS
        .iter()
        .map(|label| {
            (
                *label,
                format!(
                    r"^(?:wasmcustom|dynamicmodulescustom)\.{NAMESPACE}\.\w+(?:\.\w+\.\w+)*?(\.{label}\.(\w+))"
                ),
            )
        })
        .collect()
}

/// The buckets of every filter histogram (µs): 1 µs to 60 s, so a wait for keys, a Check call
/// or a revocation lag of seconds is not clamped (Envoy's default buckets end at 3.6e6).
pub const HISTOGRAM_BUCKETS_US: [u64; 24] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// The regex (RE2) of the stat names [`HISTOGRAM_BUCKETS_US`] applies to: Envoy matches the
/// whole name (a full match), before tag extraction.
pub fn histogram_names() -> String {
    format!(r"(?:wasmcustom|dynamicmodulescustom)\.{NAMESPACE}\.\w+_microseconds(?:\..*)?")
}

/// Every label name a filter metric uses.
pub const LABELS: [&str; 7] = [
    "outcome", "tier", "reason", "stage", "result", "kind", "action",
];

/// A stat name: the family, then each label's `.name.value` pair.
fn stat_name(family: &str, labels: &[(&str, &str)]) -> String {
    let mut name = format!("{NAMESPACE}.{family}");
    for (label, value) in labels {
        name.push('.');
        name.push_str(label);
        name.push('.');
        name.push_str(value);
    }
    name
}

/// A counter the core increments by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// A final decision: allowed (`denied: None`, reason `ok`) or denied for a reason (a
    /// [`DENY_REASONS`] label; other labels are not counted).
    Decision {
        tier: Tier,
        denied: Option<&'static str>,
    },
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

/// A stage of deciding a request, timed into `authz_proxy_check_microseconds{stage}` (the
/// server's `authz_check_seconds{stage}` uses the same names where the stage is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Reading the bearer credential and keying it for the token cache.
    TokenParse,
    /// The token cache lookup.
    TokenCache,
    /// A JWT verification (a token cache miss).
    JwtVerify,
    /// The decision cache lookup (server-decided routes).
    CacheLookup,
    /// A Check call made for a request: asked → answered or failed.
    CheckCall,
    /// A request paused for keys: paused → decided.
    KeyWait,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::TokenParse,
        Stage::TokenCache,
        Stage::JwtVerify,
        Stage::CacheLookup,
        Stage::CheckCall,
        Stage::KeyWait,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::TokenParse => "token_parse",
            Stage::TokenCache => "token_cache",
            Stage::JwtVerify => "jwt_verify",
            Stage::CacheLookup => "cache_lookup",
            Stage::CheckCall => "check_call",
            Stage::KeyWait => "key_wait",
        }
    }
}

/// A distribution the core records into, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Histogram {
    /// One stage of a request's decision.
    Stage(Stage),
    /// A request: seen → decided, by outcome and tier.
    Decision { tier: Tier, allowed: bool },
    /// From the server learning a change to this worker applying it.
    RevocationLag,
}

const TIERS: usize = Tier::ALL.len();

/// A decision's `outcome` and `reason` labels.
fn outcome(denied: Option<&str>) -> (&'static str, &str) {
    match denied {
        None => ("allow", "ok"),
        Some(reason) => ("deny", reason),
    }
}

/// The counters without a tier or reason, in index order.
const PLAIN: [Counter; 25] = [
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
const PER_TIER: [fn(Tier) -> Counter; 4] = [
    Counter::CacheHit,
    Counter::CacheMiss,
    Counter::CacheUntrusted,
    Counter::CacheEvict,
];

/// Decisions per tier: the allow, then one per deny reason.
const DECISIONS_PER_TIER: usize = 1 + DENY_REASONS.len();

impl Counter {
    /// How many counters there are ([`Counter::index`] is below this).
    pub const COUNT: usize =
        PLAIN.len() + PER_TIER.len() * TIERS + DECISIONS_PER_TIER * TIERS + Disagreement::ALL.len();

    /// Every counter, in [`Counter::index`] order.
    pub fn all() -> Vec<Counter> {
        let mut all: Vec<Counter> = PLAIN.to_vec();
        for family in PER_TIER {
            all.extend(Tier::ALL.iter().map(|t| family(*t)));
        }
        for tier in Tier::ALL {
            all.push(Counter::Decision { tier, denied: None });
            all.extend(DENY_REASONS.iter().map(|r| Counter::Decision {
                tier,
                denied: Some(r),
            }));
        }
        all.extend(Disagreement::ALL.map(Counter::CanaryDisagreement));
        all
    }

    /// A dense index in `0..COUNT`; `None` only for a deny reason not in [`DENY_REASONS`].
    pub fn index(&self) -> Option<usize> {
        let tiered = |family: usize, tier: &Tier| PLAIN.len() + family * TIERS + *tier as usize;
        let decisions = PLAIN.len() + PER_TIER.len() * TIERS;
        Some(match self {
            Counter::CacheHit(t) => tiered(0, t),
            Counter::CacheMiss(t) => tiered(1, t),
            Counter::CacheUntrusted(t) => tiered(2, t),
            Counter::CacheEvict(t) => tiered(3, t),
            Counter::Decision { tier, denied } => {
                let within = match denied {
                    None => 0,
                    Some(r) => 1 + DENY_REASONS.iter().position(|x| x == r)?,
                };
                decisions + *tier as usize * DECISIONS_PER_TIER + within
            }
            Counter::CanaryDisagreement(kind) => {
                decisions
                    + DECISIONS_PER_TIER * TIERS
                    + Disagreement::ALL.iter().position(|k| k == kind)?
            }
            plain => PLAIN.iter().position(|p| p == plain)?,
        })
    }

    /// A denial for `reason`, counted under `other` when the reason is not one of
    /// [`DENY_REASONS`] (a denial is never dropped from the count).
    pub fn denial(tier: Tier, reason: &'static str) -> Counter {
        let denied = if DENY_REASONS.contains(&reason) {
            reason
        } else {
            "other"
        };
        Counter::Decision {
            tier,
            denied: Some(denied),
        }
    }

    /// The metric's family and labels.
    pub fn family(&self) -> (&'static str, Vec<(&'static str, &'static str)>) {
        let result = |r: &'static str| vec![("result", r)];
        let tier_result = |t: &Tier, r: &'static str| vec![("tier", t.as_str()), ("result", r)];
        match self {
            Counter::Decision { tier, denied } => {
                let (outcome, reason) = outcome(*denied);
                (
                    "decisions_total",
                    vec![
                        ("outcome", outcome),
                        ("tier", tier.as_str()),
                        ("reason", reason),
                    ],
                )
            }
            Counter::JwksFetchOk => ("jwks_fetches_total", result("ok")),
            Counter::JwksFetchFailed => ("jwks_fetches_total", result("failed")),
            Counter::JwksFetchUnknownKid => ("jwks_unknown_kid_fetches_total", vec![]),
            Counter::UnknownKidRateLimited => ("jwks_unknown_kids_rate_limited_total", vec![]),
            Counter::WaitedForKeys => ("requests_waited_for_keys_total", vec![]),
            Counter::TokenCacheHit => ("token_cache_lookups_total", result("hit")),
            Counter::TokenCacheMiss => ("token_cache_lookups_total", result("miss")),
            Counter::CacheHit(t) => ("cache_lookups_total", tier_result(t, "hit")),
            Counter::CacheMiss(t) => ("cache_lookups_total", tier_result(t, "miss")),
            Counter::CacheUntrusted(t) => ("cache_lookups_total", tier_result(t, "untrusted")),
            Counter::CacheEvict(t) => ("cache_evictions_total", vec![("tier", t.as_str())]),
            Counter::ServerCalls => ("check_calls_total", vec![]),
            Counter::ServerErrors => ("check_call_errors_total", vec![]),
            Counter::PollOk => ("feed_polls_total", result("ok")),
            Counter::PollFailed => ("feed_polls_total", result("failed")),
            Counter::PollHeld => ("feed_polls_total", result("held")),
            Counter::PollUnauthorized => ("feed_polls_total", result("unauthorized")),
            Counter::RevocationsDropped => ("revocations_dropped_total", vec![]),
            Counter::ContextSigned => ("contexts_total", result("signed")),
            Counter::ContextReused => ("contexts_total", result("reused")),
            Counter::BackgroundChecks => ("background_checks_total", result("sent")),
            Counter::BackgroundRevoked => ("background_checks_total", result("revoked")),
            Counter::BackgroundFailed => ("background_checks_total", result("failed")),
            Counter::BackgroundDropped => ("background_checks_total", result("dropped")),
            Counter::SwitchFlush => ("switch_actions_total", vec![("action", "flush")]),
            Counter::SwitchJwksRefetch => {
                ("switch_actions_total", vec![("action", "jwks_refetch")])
            }
            Counter::SwitchesUnreadable => ("switches_unreadable_total", vec![]),
            Counter::CanaryCompared => ("canary_compared_total", vec![]),
            Counter::CanaryDisagreement(kind) => {
                ("canary_disagreements_total", vec![("kind", kind.as_str())])
            }
            Counter::CanaryRefused => ("canary_refused_total", vec![]),
        }
    }

    /// The metric's stat name (see the module's naming scheme).
    pub fn name(&self) -> String {
        let (family, labels) = self.family();
        stat_name(family, &labels)
    }

    /// Counted on every allowed request: a host may batch these (the proxy-wasm host adds
    /// them to Envoy's counters once per tick instead of once per request).
    pub fn is_hot(&self) -> bool {
        matches!(
            self,
            Counter::Decision { denied: None, .. } | Counter::TokenCacheHit
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

    pub fn name(&self) -> String {
        let family = match self {
            Gauge::CacheEntries => "cache_entries",
            Gauge::PolicyVersion => "policy_version",
            Gauge::Revocations => "revocations",
            Gauge::PushConnected => "push_connected",
            Gauge::SwitchesOn => "switches_on",
        };
        stat_name(family, &[])
    }
}

impl Histogram {
    /// How many histograms there are ([`Histogram::index`] is below this).
    pub const COUNT: usize = Stage::ALL.len() + 2 * TIERS + 1;

    /// Every histogram, in [`Histogram::index`] order.
    pub fn all() -> Vec<Histogram> {
        let mut all: Vec<Histogram> = Stage::ALL.map(Histogram::Stage).to_vec();
        for tier in Tier::ALL {
            for allowed in [true, false] {
                all.push(Histogram::Decision { tier, allowed });
            }
        }
        all.push(Histogram::RevocationLag);
        all
    }

    /// A dense index in `0..COUNT`.
    pub fn index(&self) -> usize {
        match self {
            Histogram::Stage(stage) => *stage as usize,
            Histogram::Decision { tier, allowed } => {
                Stage::ALL.len() + *tier as usize * 2 + usize::from(!allowed)
            }
            Histogram::RevocationLag => Stage::ALL.len() + 2 * TIERS,
        }
    }

    /// The metric's stat name (see the module's naming scheme).
    pub fn name(&self) -> String {
        match self {
            Histogram::Stage(stage) => {
                stat_name("check_microseconds", &[("stage", stage.as_str())])
            }
            Histogram::Decision { tier, allowed } => {
                let (outcome, _) = outcome((!allowed).then_some(""));
                stat_name(
                    "decision_microseconds",
                    &[("outcome", outcome), ("tier", tier.as_str())],
                )
            }
            Histogram::RevocationLag => stat_name("revocation_lag_microseconds", &[]),
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
        let unknown = Counter::Decision {
            tier: Tier::Public,
            denied: Some("no_such_reason"),
        };
        assert_eq!(unknown.index(), None);
        assert_eq!(
            Counter::denial(Tier::Public, "no_such_reason"),
            Counter::denial(Tier::Public, "other")
        );
        assert!(Counter::denial(Tier::Public, "no_such_reason")
            .index()
            .is_some());
        let histograms = Histogram::all();
        assert_eq!(histograms.len(), Histogram::COUNT);
        for (i, histogram) in histograms.iter().enumerate() {
            assert_eq!(histogram.index(), i, "{histogram:?}");
        }
        let names: HashSet<String> = histograms.iter().map(Histogram::name).collect();
        assert_eq!(names.len(), histograms.len());
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
            VerifyFailure::LifetimeTooLong,
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
