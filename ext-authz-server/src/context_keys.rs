//! The signing keys of the verification context: one Ed25519 key per rotation period
//! (`context.rotate_every_seconds`), derived from the seed in `context.signing_seed_file` as
//! HMAC-SHA256(seed, "authz-context/v1/" + issuer + audience + period length + period). Every
//! replica with the same seed signs with the same key at the same time and publishes the same
//! JWKS, without coordinating, and a restart changes nothing; another issuer, audience or period
//! length (a staging stack sharing the seed) gets other keys.
//!
//! Published (`GET /context/jwks.json`, no credential: public keys): the next period's key,
//! one period before it signs (a service refreshing its JWKS once per period always has it), and
//! each past key until every context it may have signed has expired (the longest lifetime any
//! filter may configure, 300 s, plus a minute of skew). Keys are derived once per period and
//! kept (a JWKS request costs no derivation).
//! Sent to filters with the change feed (credential required): the current and the next key, so
//! a filter switches at the boundary by its own clock, with no request of its own.
//!
//! What it does not do: keep state, or read a clock (time is a parameter).

use authz_context::{jwk, ContextSigner};
use authz_core::context::{context_claims, ContextSettings, Decided, FeedKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Skew allowed for services' clocks when deciding how long a past key stays published.
const PUBLISHED_SKEW_SECONDS: u64 = 60;

/// The longest context lifetime a filter or server may configure (`lifetime_seconds`).
const LONGEST_LIFETIME_SECONDS: u64 = 300;

/// Derived keys kept (more than a JWKS of the shortest period needs).
const KEPT_KEYS: usize = 512;

/// The shortest seed accepted, bytes.
pub const MIN_SEED_BYTES: usize = 32;

/// The key ring: settings, seed and period, and the keys derived so far.
#[derive(Clone)]
pub struct ContextKeyRing {
    pub settings: ContextSettings,
    seed: Vec<u8>,
    pub rotate_every_seconds: u64,
    derived: Arc<Mutex<HashMap<u64, FeedKey>>>,
}

impl std::fmt::Debug for ContextKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ContextKeyRing(every {} s, seed ..)",
            self.rotate_every_seconds
        )
    }
}

impl ContextKeyRing {
    pub fn new(settings: ContextSettings, seed: Vec<u8>, rotate_every_seconds: u64) -> Self {
        ContextKeyRing {
            settings,
            seed,
            rotate_every_seconds: rotate_every_seconds.max(1),
            derived: Arc::default(),
        }
    }

    fn period(&self, now_seconds: u64) -> u64 {
        now_seconds / self.rotate_every_seconds
    }

    /// The key of `period`, with the window in which it signs (derived once, then kept).
    fn key(&self, period: u64) -> Option<FeedKey> {
        if let Some(key) = lock(&self.derived).get(&period) {
            return Some(key.clone());
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.seed).ok()?;
        let settings = &self.settings;
        mac.update(
            format!(
                "authz-context/v1/{}/{}/{}/{period}",
                settings.issuer, settings.audience, self.rotate_every_seconds
            )
            .as_bytes(),
        );
        let secret: [u8; 32] = mac.finalize().into_bytes().into();
        let public = ContextSigner::new("", &secret).verifying_key().to_bytes();
        let tag = URL_SAFE_NO_PAD.encode(public.get(..6).unwrap_or_default());
        let from = period.saturating_mul(self.rotate_every_seconds);
        let key = FeedKey {
            signer: ContextSigner::new(&format!("ctx-{period}-{tag}"), &secret),
            from,
            until: from.saturating_add(self.rotate_every_seconds),
        };
        let mut derived = lock(&self.derived);
        if derived.len() >= KEPT_KEYS {
            derived.clear();
        }
        derived.insert(period, key.clone());
        Some(key)
    }

    /// The key that signs at `now_seconds`.
    pub fn signer(&self, now_seconds: u64) -> Option<ContextSigner> {
        self.key(self.period(now_seconds)).map(|k| k.signer)
    }

    /// What the change feed sends: the current and the next key.
    pub fn feed_keys(&self, now_seconds: u64) -> Vec<FeedKey> {
        let period = self.period(now_seconds);
        [period, period.saturating_add(1)]
            .into_iter()
            .filter_map(|p| self.key(p))
            .collect()
    }

    /// The published keys: the next one, the current one, and past ones whose contexts may
    /// still be valid.
    fn published(&self, now_seconds: u64) -> impl Iterator<Item = FeedKey> + '_ {
        let oldest_valid = now_seconds
            .saturating_sub(LONGEST_LIFETIME_SECONDS)
            .saturating_sub(PUBLISHED_SKEW_SECONDS);
        let newest = self.period(now_seconds).saturating_add(1);
        (self.period(oldest_valid)..=newest)
            .rev()
            .filter_map(|period| self.key(period))
    }

    /// The public JWKS of the [published](Self::published) keys.
    pub fn jwks(&self, now_seconds: u64) -> Value {
        let keys: Vec<Value> = self
            .published(now_seconds)
            .map(|key| jwk(key.signer.kid(), &key.signer.verifying_key()))
            .collect();
        json!({ "keys": keys })
    }

    /// The [published](Self::published) keys as a verifier reads them (what the JWKS says,
    /// without writing and parsing it).
    pub fn key_set(&self, now_seconds: u64) -> authz_context::KeySet {
        authz_context::KeySet::from_keys(
            self.published(now_seconds)
                .map(|key| (key.signer.kid().to_owned(), key.signer.verifying_key())),
        )
    }

    /// The signed context for `decided` at `now_seconds` (`None`: no key could be derived).
    pub fn sign(&self, decided: &Decided<'_>, now_seconds: u64) -> Option<String> {
        let signer = self.signer(now_seconds)?;
        Some(signer.sign(&context_claims(&self.settings, decided, now_seconds)))
    }

    /// How long a service may cache the JWKS (a quarter period, at most five minutes).
    pub fn jwks_max_age_seconds(&self) -> u64 {
        (self.rotate_every_seconds / 4).clamp(1, 300)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_context::{KeySet, Verifier};
    use authz_core::Tier;

    fn ring(seed: &[u8]) -> ContextKeyRing {
        ContextKeyRing::new(
            ContextSettings {
                header: "x-auth-context".into(),
                issuer: "authz".into(),
                audience: "orders".into(),
                lifetime_seconds: 60,
                claims: vec![],
            },
            seed.to_vec(),
            600,
        )
    }

    fn decided() -> Decided<'static> {
        Decided {
            subject: "alice",
            subject_kind: "sub",
            idp: "https://idp",
            scopes: &[],
            tier: Tier::Privileged,
            tenant: None,
            policy_version: 1,
            method: "POST",
            route: "admin",
            token_claims: None,
            token_expires_at: None,
        }
    }

    fn published(ring: &ContextKeyRing, now: u64) -> KeySet {
        KeySet::from_jwks(ring.jwks(now).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn replicas_with_one_seed_sign_alike_and_other_seeds_do_not_verify() {
        let (a, b, other) = (ring(&[1; 32]), ring(&[1; 32]), ring(&[2; 32]));
        let now = 1_800_000_123;
        assert_eq!(a.sign(&decided(), now), b.sign(&decided(), now));
        let context = a.sign(&decided(), now).unwrap();
        let verifier = Verifier::new("authz", "orders");
        assert!(verifier
            .verify(
                &context,
                &published(&b, now),
                &authz_context::Expected::new("POST", "admin"),
                now
            )
            .is_ok());
        assert!(verifier
            .verify(
                &context,
                &published(&other, now),
                &authz_context::Expected::new("POST", "admin"),
                now
            )
            .is_err());
        // The same seed for another audience (a staging stack sharing it): other keys.
        let mut staging = ring(&[1; 32]);
        staging.settings.audience = "orders-staging".into();
        staging.derived = Arc::default();
        assert!(verifier
            .verify(
                &context,
                &published(&staging, now),
                &authz_context::Expected::new("POST", "admin"),
                now
            )
            .is_err());
        assert_ne!(
            staging.signer(now).unwrap().kid(),
            a.signer(now).unwrap().kid()
        );
    }

    #[test]
    fn a_rotation_publishes_ahead_and_keeps_old_keys_until_their_contexts_expire() {
        let ring = ring(&[1; 32]);
        let boundary = 1_800_000_000 / 600 * 600 + 600;
        let before = ring.sign(&decided(), boundary - 1).unwrap();
        let after = ring.sign(&decided(), boundary).unwrap();
        let verifier = Verifier::new("authz", "orders");
        // Published before the boundary: the next key already verifies.
        let early = published(&ring, boundary - 1);
        assert!(verifier
            .verify(
                &after,
                &early,
                &authz_context::Expected::new("POST", "admin"),
                boundary
            )
            .is_ok());
        // After it: the old key stays while contexts it signed may be valid.
        let late = published(&ring, boundary + 359);
        assert!(verifier
            .verify(
                &before,
                &late,
                &authz_context::Expected::new("POST", "admin"),
                boundary + 59
            )
            .is_ok());
        assert_ne!(
            before.split('.').next(),
            after.split('.').next(),
            "a new kid after the boundary"
        );
        // Long after: the old key is gone.
        let gone = published(&ring, boundary + 361);
        assert!(!gone.contains(ring.signer(boundary - 1).unwrap().kid()));
        // The feed carries the current and the next key, and the next one signs after the boundary.
        let feed = ring.feed_keys(boundary - 1);
        assert_eq!(
            authz_core::context::signing_key(&feed, boundary).map(|s| s.kid().to_owned()),
            Some(ring.signer(boundary).unwrap().kid().to_owned())
        );
    }
}
