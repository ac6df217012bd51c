//! The in-proxy caches, as pure data structures (the clock is a parameter):
//!
//! - [`DecisionCache`]: server decisions (allow or deny) for tiers that need the server, keyed
//!   by [`decision_key`] = keyed SipHash-128(token, method, route, policy version). Each entry also
//!   remembers its subject and token hash so a subject or token revocation can purge it.
//! - [`TokenCache`]: the local JWT path's verification results, keyed by a keyed token hash, so a hot
//!   token skips signature verification; failures are kept only briefly.
//!
//! Both are LRU maps with a fixed entry cap, so a flood of unique tokens evicts old entries and
//! never grows memory past the cap. Lifetimes never exceed the server's TTL, the tier's cap or
//! the token's expiry. When the proxy has not heard from the server for too long, cached
//! decisions of tiers above `authenticated` are not used ([`DecisionCache::lookup`]). The
//! incident switches (`crate::switches`) reach both caches at lookup: a tier's `cache_max`
//! makes entries older than it misses (whenever they were stored), and `fail_closed` makes an
//! `authenticated` entry untrusted too while the server is not heard from.
//!
//! What this module does not do: decide when to poll, or talk to anyone.

use crate::switches::Known;
use crate::tier::Tier;
use crate::token_hash::TokenKeyer;
use crate::verify::{VerifiedToken, VerifyFailure};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Arc;

/// Key of a cached decision.
pub type DecisionKey = u128;

/// Longest reuse of a denial unless configured (`cache.deny_ttl_ms`).
pub const DEFAULT_DENY_MS: u64 = 2_000;

/// The decision key: everything the decision depends on that the proxy knows up front (token,
/// method, the path routes are matched against — the server's route and tenant rules read it —,
/// route name and policy version), under
/// the worker's keyed hash (a cache hit computes no SHA-256). (The subject's epoch is enforced
/// by purging on revocation, since an opaque token's subject is unknown until the server
/// answers; entries keep the token's SHA-256 for revocations by token hash.)
pub fn decision_key(
    keyer: &TokenKeyer,
    token: &str,
    method: &str,
    match_path: &str,
    route: &str,
    policy_version: u64,
) -> DecisionKey {
    keyer.key_of(&[
        token.as_bytes(),
        method.to_ascii_uppercase().as_bytes(),
        match_path.as_bytes(),
        route.as_bytes(),
        &policy_version.to_be_bytes(),
    ])
}

/// A decision as the proxy replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedOutcome {
    /// Continue after setting `headers` and removing `remove`.
    Allow {
        headers: Vec<(String, String)>,
        remove: Vec<String>,
    },
    /// Answer with this response.
    Deny {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl CachedOutcome {
    pub fn is_allow(&self) -> bool {
        matches!(self, CachedOutcome::Allow { .. })
    }
}

/// One cached decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedDecision {
    pub outcome: CachedOutcome,
    pub tier: Tier,
    pub subject: Option<String>,
    /// SHA-256 of the token's bytes.
    pub token_digest: [u8; 32],
    /// `token_hash::revocation_digest` of the token (its signed part, for a JWS).
    pub revocation_digest: [u8; 32],
    /// When it was stored (a `cache_max` switch measures its age from this).
    pub stored_at_ms: u64,
    pub expires_at_ms: u64,
}

/// Per-tier caps on how long the proxy may reuse a server decision, in ms (0 = never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierCaps {
    pub caps_ms: [u64; 5],
    /// Cap for cached denials, whatever the tier.
    pub deny_ms: u64,
}

impl Default for TierCaps {
    /// Matches the server's default freshness table: authenticated 60 s, standard_write 30 s,
    /// privileged 5 s, regulated 1 s; denials 2 s.
    fn default() -> TierCaps {
        TierCaps {
            caps_ms: [0, 60_000, 30_000, 5_000, 1_000],
            deny_ms: DEFAULT_DENY_MS,
        }
    }
}

fn tier_index(tier: Tier) -> usize {
    Tier::ALL.iter().position(|t| *t == tier).unwrap_or(4)
}

impl TierCaps {
    pub fn cap(&self, tier: Tier) -> u64 {
        self.caps_ms.get(tier_index(tier)).copied().unwrap_or(0)
    }

    pub fn set(&mut self, tier: Tier, ms: u64) {
        if let Some(cap) = self.caps_ms.get_mut(tier_index(tier)) {
            *cap = ms;
        }
    }

    /// How long a decision may live: never past the server's TTL, the tier's cap, or (for a
    /// denial) the denial cap.
    pub fn lifetime_ms(&self, tier: Tier, server_ttl_ms: u64, is_allow: bool) -> u64 {
        let cap = if is_allow {
            self.cap(tier)
        } else {
            self.cap(tier).min(self.deny_ms)
        };
        server_ttl_ms.min(cap)
    }
}

/// What a lookup found, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    Hit,
    Miss,
    /// An entry existed but may not be used while the server is unreachable.
    Untrusted,
}

/// The per-worker decision cache.
#[derive(Debug)]
pub struct DecisionCache {
    entries: LruCache<DecisionKey, CachedDecision>,
    pub caps: TierCaps,
    pub evictions: u64,
}

impl DecisionCache {
    pub fn new(max_entries: usize, caps: TierCaps) -> DecisionCache {
        DecisionCache {
            entries: LruCache::new(
                NonZeroUsize::new(max_entries.max(1)).unwrap_or(NonZeroUsize::MIN),
            ),
            caps,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A usable entry for `key` at `now_ms`. Expired entries, and entries older than their
    /// tier's `cache_max` switch, are dropped. When `server_reachable` is false, entries of
    /// tiers above `authenticated`, or of a tier switched to fail closed, are not used.
    pub fn lookup(
        &mut self,
        key: &DecisionKey,
        now_ms: u64,
        server_reachable: bool,
        switches: &Known,
    ) -> (LookupResult, Option<CachedDecision>) {
        let Some(entry) = self.entries.get(key) else {
            return (LookupResult::Miss, None);
        };
        let too_old = switches
            .cache_cap_ms(entry.tier, now_ms)
            .is_some_and(|cap| now_ms.saturating_sub(entry.stored_at_ms) >= cap);
        if now_ms >= entry.expires_at_ms || too_old {
            self.entries.pop(key);
            return (LookupResult::Miss, None);
        }
        if !server_reachable
            && (entry.tier > Tier::Authenticated || switches.fails_closed(entry.tier, now_ms))
        {
            return (LookupResult::Untrusted, None);
        }
        (LookupResult::Hit, Some(entry.clone()))
    }

    /// Stores a decision. Returns the tier of an older entry evicted to make room, if any.
    pub fn insert(&mut self, key: DecisionKey, decision: CachedDecision) -> Option<Tier> {
        match self.entries.push(key, decision) {
            Some((old_key, old)) if old_key != key => {
                self.evictions += 1;
                Some(old.tier)
            }
            _ => None,
        }
    }

    /// Removes every entry about `subject`; returns how many.
    pub fn purge_subject(&mut self, subject: &str) -> usize {
        self.purge(|d| d.subject.as_deref() == Some(subject))
    }

    /// Removes every entry for a revoked token: `digest` names its bytes or its signed part.
    pub fn purge_token(&mut self, digest: &[u8; 32]) -> usize {
        self.purge(|d| &d.token_digest == digest || &d.revocation_digest == digest)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    fn purge(&mut self, matches: impl Fn(&CachedDecision) -> bool) -> usize {
        let doomed: Vec<DecisionKey> = self
            .entries
            .iter()
            .filter(|(_, d)| matches(d))
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            self.entries.pop(k);
        }
        doomed.len()
    }
}

/// A cached verification result.
#[derive(Debug, Clone)]
struct TokenEntry {
    result: Result<Arc<VerifiedToken>, VerifyFailure>,
    stored_at_ms: u64,
    expires_at_ms: u64,
    keys_version: u64,
}

impl TokenEntry {
    fn usable(&self, now_ms: u64, keys_version: u64, max_age_ms: Option<u64>) -> bool {
        now_ms < self.expires_at_ms
            && self.keys_version == keys_version
            && max_age_ms.is_none_or(|max| now_ms.saturating_sub(self.stored_at_ms) < max)
    }
}

/// A token cache key: [`crate::token_hash::TokenKeyer::key`].
pub type TokenKey = u128;

/// The per-worker cache of local JWT verification results, keyed by a keyed hash of the token.
#[derive(Debug)]
pub struct TokenCache {
    entries: LruCache<TokenKey, TokenEntry>,
    /// Longest a positive result is kept (it is also never kept past `exp` + skew).
    pub max_ms: u64,
    /// How long a failure is kept.
    pub failure_ms: u64,
    pub evictions: u64,
}

impl TokenCache {
    pub fn new(max_entries: usize, max_ms: u64, failure_ms: u64) -> TokenCache {
        TokenCache {
            entries: LruCache::new(
                NonZeroUsize::new(max_entries.max(1)).unwrap_or(NonZeroUsize::MIN),
            ),
            max_ms,
            failure_ms,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached result, if it is still valid at `now_ms` for key-set version `keys_version`
    /// and younger than `max_age_ms` (a `cache_max` switch on the request's tier).
    pub fn get(
        &mut self,
        key: &TokenKey,
        now_ms: u64,
        keys_version: u64,
        max_age_ms: Option<u64>,
    ) -> Option<Result<Arc<VerifiedToken>, VerifyFailure>> {
        let entry = self.entries.get(key)?;
        if !entry.usable(now_ms, keys_version, max_age_ms) {
            self.entries.pop(key);
            return None;
        }
        Some(entry.result.clone())
    }

    /// Whether [`TokenCache::get`] would answer, without touching the entry's recency or
    /// dropping a stale one.
    pub fn contains(
        &self,
        key: &TokenKey,
        now_ms: u64,
        keys_version: u64,
        max_age_ms: Option<u64>,
    ) -> bool {
        self.entries
            .peek(key)
            .is_some_and(|e| e.usable(now_ms, keys_version, max_age_ms))
    }

    /// Keeps a result. Key-dependent failures (keys missing, unknown `kid`) are not kept: the
    /// next request must be able to trigger a fetch. `skew_ms` extends nothing; positive
    /// entries end at `exp` + skew at the latest, because after that verification would fail.
    pub fn put(
        &mut self,
        key: TokenKey,
        result: Result<Arc<VerifiedToken>, VerifyFailure>,
        now_ms: u64,
        keys_version: u64,
        skew_ms: u64,
    ) {
        let expires_at_ms = match &result {
            Ok(v) => {
                let exp_ms = v
                    .claims
                    .expires_at
                    .map(|e| {
                        (e.max(0) as u64)
                            .saturating_mul(1000)
                            .saturating_add(skew_ms)
                    })
                    .unwrap_or(u64::MAX);
                exp_ms.min(now_ms + self.max_ms)
            }
            Err(VerifyFailure::KeysUnavailable { .. } | VerifyFailure::UnknownKey { .. }) => return,
            Err(_) => now_ms + self.failure_ms,
        };
        if expires_at_ms <= now_ms {
            return;
        }
        if self.entries.cap().get() == self.entries.len() && !self.entries.contains(&key) {
            self.evictions += 1;
        }
        self.entries.put(
            key,
            TokenEntry {
                result,
                stored_at_ms: now_ms,
                expires_at_ms,
                keys_version,
            },
        );
    }

    /// Drops cached failures (e.g. on a policy change) and keeps verified tokens.
    /// Forgets every verification (a policy change: each token is checked again).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn drop_failures(&mut self) {
        let doomed: Vec<TokenKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.result.is_err())
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            self.entries.pop(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NO_SWITCHES: Known = Known::Read(crate::switches::Switches::NONE);

    fn allow(tier: Tier, subject: &str, token: u8, expires_at_ms: u64) -> CachedDecision {
        CachedDecision {
            outcome: CachedOutcome::Allow {
                headers: vec![],
                remove: vec![],
            },
            tier,
            subject: Some(subject.into()),
            token_digest: [token; 32],
            revocation_digest: [token ^ 0xff; 32],
            stored_at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn keys_change_with_every_component() {
        let k = TokenKeyer::new([7, 9]);
        let t = "token-1";
        let base = decision_key(&k, t, "GET", "/p", "admin", 1);
        assert_ne!(base, decision_key(&k, "token-2", "GET", "/p", "admin", 1));
        assert_ne!(base, decision_key(&k, t, "POST", "/p", "admin", 1));
        assert_ne!(base, decision_key(&k, t, "GET", "/p", "other", 1));
        assert_ne!(
            decision_key(&k, t, "GET", "/tenants/acme/x", "admin", 1),
            decision_key(&k, t, "GET", "/tenants/globex/x", "admin", 1),
            "the path is part of what the server decided"
        );
        assert_eq!(base, decision_key(&k, t, "get", "/p", "admin", 1));
        assert_ne!(
            base,
            decision_key(&k, t, "GET", "/p", "admin", 2),
            "a policy bump makes old entries unreachable"
        );
        assert_ne!(
            decision_key(&k, t, "GE", "/p", "Tadmin", 1),
            decision_key(&k, t, "GET", "/p", "admin", 1),
            "components are delimited"
        );
        assert_ne!(
            base,
            decision_key(&TokenKeyer::new([8, 9]), t, "GET", "/p", "admin", 1),
            "keys are secret per worker"
        );
    }

    #[test]
    fn lifetimes_respect_server_ttl_tier_cap_and_deny_cap() {
        let caps = TierCaps::default();
        assert_eq!(caps.lifetime_ms(Tier::Privileged, 60_000, true), 5_000);
        assert_eq!(caps.lifetime_ms(Tier::Privileged, 1_200, true), 1_200);
        assert_eq!(caps.lifetime_ms(Tier::Authenticated, 60_000, false), 2_000);
        let mut never = TierCaps::default();
        never.set(Tier::Regulated, 0);
        assert_eq!(never.lifetime_ms(Tier::Regulated, 60_000, true), 0);
    }

    #[test]
    fn expired_and_untrusted_entries_are_not_served() {
        let mut c = DecisionCache::new(10, TierCaps::default());
        let k: DecisionKey = 9;
        c.insert(k, allow(Tier::Privileged, "alice", 1, 1_000));
        assert_eq!(c.lookup(&k, 500, true, &NO_SWITCHES).0, LookupResult::Hit);
        assert_eq!(
            c.lookup(&k, 500, false, &NO_SWITCHES).0,
            LookupResult::Untrusted
        );
        assert_eq!(
            c.lookup(&k, 1_000, true, &NO_SWITCHES).0,
            LookupResult::Miss
        );
        assert!(c.is_empty(), "expired entries are dropped");
        let a: DecisionKey = 8;
        c.insert(a, allow(Tier::Authenticated, "bob", 2, 1_000));
        assert_eq!(
            c.lookup(&a, 10, false, &NO_SWITCHES).0,
            LookupResult::Hit,
            "authenticated entries survive an unreachable server"
        );
    }

    #[test]
    fn a_cache_max_switch_ages_entries_out_and_fail_closed_distrusts_authenticated_ones() {
        let mut c = DecisionCache::new(10, TierCaps::default());
        let mut on = crate::switches::Switches::default();
        on.apply(
            &crate::switches::Setting::CacheMax {
                tier: Tier::Privileged,
                max_ms: Some(100),
                until_ms: Some(5_000),
            },
            0,
        );
        on.apply(
            &crate::switches::Setting::FailClosed {
                tier: Tier::Authenticated,
                on: true,
                until_ms: None,
            },
            0,
        );
        let on = Known::Read(on);
        c.insert(1, allow(Tier::Privileged, "a", 1, 9_000));
        assert_eq!(c.lookup(&1, 99, true, &on).0, LookupResult::Hit);
        assert_eq!(c.lookup(&1, 100, true, &on).0, LookupResult::Miss);
        assert!(c.is_empty(), "aged out and dropped");
        // Past the switch's expiry the tier's own cap rules again.
        c.insert(1, allow(Tier::Privileged, "a", 1, 9_000));
        assert_eq!(c.lookup(&1, 5_000, true, &on).0, LookupResult::Hit);
        c.insert(2, allow(Tier::Authenticated, "b", 2, 9_000));
        assert_eq!(c.lookup(&2, 10, true, &on).0, LookupResult::Hit);
        assert_eq!(c.lookup(&2, 10, false, &on).0, LookupResult::Untrusted);
        assert_eq!(c.lookup(&2, 10, false, &NO_SWITCHES).0, LookupResult::Hit);
        // Knowing no switches, an unreachable server's authenticated entries are not used.
        assert_eq!(
            c.lookup(&2, 10, false, &Known::Unknown).0,
            LookupResult::Untrusted
        );
    }

    #[test]
    fn a_token_cache_entry_older_than_the_cap_is_a_miss() {
        let mut c = TokenCache::new(4, 60_000, 1_000);
        let verified = Err(VerifyFailure::Expired);
        c.put(7, verified, 1_000, 1, 0);
        assert!(c.contains(&7, 1_400, 1, Some(500)));
        assert!(!c.contains(&7, 1_500, 1, Some(500)));
        assert!(c.get(&7, 1_400, 1, Some(500)).is_some());
        assert!(c.get(&7, 1_500, 1, Some(500)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn purges_by_subject_and_token() {
        let mut c = DecisionCache::new(10, TierCaps::default());
        c.insert(1, allow(Tier::Privileged, "alice", 1, 9_999));
        c.insert(2, allow(Tier::Privileged, "alice", 2, 9_999));
        c.insert(3, allow(Tier::Privileged, "bob", 3, 9_999));
        assert_eq!(c.purge_subject("alice"), 2);
        assert_eq!(c.purge_token(&[3; 32]), 1);
        assert!(c.is_empty());
    }

    fn verified(exp: i64, sub: &str) -> VerifiedToken {
        let claims =
            crate::Claims::from_json(format!(r#"{{"exp":{exp},"sub":"{sub}"}}"#).as_bytes())
                .unwrap();
        VerifiedToken {
            provider: 0,
            algorithm: jsonwebtoken::Algorithm::ES256,
            kid: None,
            claims,
            digest: [0; 32],
            signed_digest: [0; 32],
        }
    }

    #[test]
    fn verified_tokens_live_until_exp_plus_skew_or_the_cap_and_only_for_their_key_set() {
        let mut c = TokenCache::new(10, 60_000, 2_000);
        c.put(1, Ok(Arc::new(verified(100, "a"))), 90_000, 7, 1_000);
        assert!(c.get(&1, 100_999, 7, None).is_some(), "until exp + skew");
        assert!(c.get(&1, 101_000, 7, None).is_none(), "not at exp + skew");
        c.put(2, Ok(Arc::new(verified(10_000, "b"))), 0, 7, 0);
        assert!(c.get(&2, 59_999, 7, None).is_some());
        assert!(c.get(&2, 60_000, 7, None).is_none(), "capped by max_ms");
        c.put(3, Ok(Arc::new(verified(10_000, "c"))), 0, 7, 0);
        assert!(
            c.get(&3, 1, 8, None).is_none(),
            "a new key set drops old verifications"
        );
    }

    #[test]
    fn failures_are_brief_and_key_failures_are_not_kept() {
        let mut c = TokenCache::new(10, 60_000, 2_000);
        c.put(1, Err(VerifyFailure::BadSignature { provider: 0 }), 0, 1, 0);
        assert!(matches!(
            c.get(&1, 1_999, 1, None),
            Some(Err(VerifyFailure::BadSignature { provider: 0 }))
        ));
        assert!(c.get(&1, 2_000, 1, None).is_none());
        c.put(
            2,
            Err(VerifyFailure::UnknownKey {
                provider: 0,
                kid: "k".into(),
            }),
            0,
            1,
            0,
        );
        assert!(
            c.get(&2, 1, 1, None).is_none(),
            "an unknown kid must be able to trigger a fetch"
        );
        c.put(3, Err(VerifyFailure::Expired), 0, 1, 0);
        c.put(4, Ok(Arc::new(verified(10_000, "d"))), 0, 1, 0);
        c.drop_failures();
        assert!(c.get(&3, 1, 1, None).is_none() && c.get(&4, 1, 1, None).is_some());
    }

    proptest! {
        /// However many distinct keys arrive, the cache never holds more than its cap, and
        /// every insert past the cap counts an eviction.
        #[test]
        fn the_cap_holds_under_a_flood(cap in 1usize..50, keys in proptest::collection::vec(any::<[u8; 4]>(), 1..400)) {
            let mut c = DecisionCache::new(cap, TierCaps::default());
            let mut distinct = std::collections::HashSet::new();
            for k in &keys {
                let key = DecisionKey::from(u32::from_le_bytes(*k));
                distinct.insert(key);
                c.insert(key, allow(Tier::Privileged, "x", 0, u64::MAX));
                prop_assert!(c.len() <= cap);
            }
            prop_assert_eq!(c.len(), distinct.len().min(cap));
        }

        /// No lookup ever returns an entry at or after its expiry.
        #[test]
        fn never_served_after_expiry(expiry in 0u64..10_000, at in 0u64..20_000) {
            let mut c = DecisionCache::new(4, TierCaps::default());
            c.insert(1, allow(Tier::Authenticated, "a", 1, expiry));
            let (result, entry) = c.lookup(&1, at, true, &NO_SWITCHES);
            prop_assert_eq!(result == LookupResult::Hit, at < expiry);
            prop_assert_eq!(entry.is_some(), at < expiry);
        }
    }
}
