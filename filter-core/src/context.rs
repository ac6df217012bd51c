//! The signed verification context on this worker's local allows: the signing keys the change
//! feed brought (never anything from the client path), and contexts already signed, reused for
//! the same token, method, route, tenant and policy version while at least half their lifetime
//! is left,
//! so a hot token does not pay a signature (about 45 µs in Wasm) per request.
//!
//! What it does not do: decide. It signs what the worker allowed, and says when it cannot (no
//! key yet), which the worker turns into a fail-closed 503.

use authz_core::context::{context_claims, signing_key, ContextSettings, Decided, FeedKey};
use authz_core::token_hash::TokenKeyer;
use std::collections::HashMap;

/// At most this many signed contexts are kept for reuse (a bounded, cleared-when-full map:
/// junk cannot grow it, and a cleared one costs a signature per token again).
const MAX_REUSED: usize = 4_096;

/// The worker's signing state.
#[derive(Debug, Default)]
pub struct ContextSigning {
    keys: Vec<FeedKey>,
    /// Signed contexts and their `exp` (seconds), under a keyed hash of the token, method,
    /// route, tenant and policy version (as the decision cache keys its entries).
    reused: HashMap<u128, (String, u64)>,
    /// Whether an answer without keys was reported (once, until keys arrive).
    reported_keyless: bool,
}

impl ContextSigning {
    /// The keys of a feed answer: they replace the ones held (an answer without keys, from a
    /// server that signs nothing, changes nothing). Returns whether they differ from the keys
    /// held (a new period's).
    pub fn set_keys(&mut self, keys: Vec<FeedKey>) -> bool {
        if keys.is_empty() {
            return false;
        }
        let kids = |keys: &[FeedKey]| -> Vec<String> {
            keys.iter().map(|k| k.signer.kid().to_owned()).collect()
        };
        let changed = kids(&keys) != kids(&self.keys);
        self.keys = keys;
        self.reported_keyless = false;
        changed
    }

    /// An answer without keys came while none are held: true the first time (to report it
    /// once, not on every answer).
    pub fn keyless_answer(&mut self) -> bool {
        let first = self.keys.is_empty() && !self.reported_keyless;
        self.reported_keyless |= first;
        first
    }

    /// Whether a key signs at `now_seconds`.
    pub fn has_key(&self, now_seconds: u64) -> bool {
        signing_key(&self.keys, now_seconds).is_some()
    }

    /// The context for `decided` of `bearer` (`keyer` keys what it is reused for), and
    /// whether it was reused rather than signed now; `None` without a key for `now_seconds`.
    pub fn context_for(
        &mut self,
        settings: &ContextSettings,
        keyer: &TokenKeyer,
        bearer: &str,
        decided: &Decided<'_>,
        now_seconds: u64,
    ) -> Option<(String, bool)> {
        // The tenant a route's tenant rule read from the path is the one claim that depends
        // on more than the token, method and route.
        let (has_tenant, tenant) = match decided.tenant {
            Some(tenant) => (&[1u8][..], tenant.as_bytes()),
            None => (&[0u8][..], &[][..]),
        };
        let key = keyer.key_of(&[
            bearer.as_bytes(),
            decided.method.to_ascii_uppercase().as_bytes(),
            decided.route.as_bytes(),
            has_tenant,
            tenant,
            &decided.policy_version.to_be_bytes(),
        ]);
        let half = settings.lifetime_seconds.div_ceil(2);
        if let Some((context, exp)) = self.reused.get(&key) {
            if exp.saturating_sub(now_seconds) >= half {
                return Some((context.clone(), true));
            }
        }
        let signer = signing_key(&self.keys, now_seconds)?;
        let context = signer.sign(&context_claims(settings, decided, now_seconds));
        if self.reused.len() >= MAX_REUSED {
            self.reused.clear();
        }
        self.reused.insert(
            key,
            (
                context.clone(),
                now_seconds.saturating_add(settings.lifetime_seconds),
            ),
        );
        Some((context, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_context::{ContextSigner, KeySet, Verifier};
    use authz_core::Tier;

    fn keyer() -> TokenKeyer {
        TokenKeyer::new([1, 2])
    }

    fn settings() -> ContextSettings {
        ContextSettings {
            header: "x-auth-context".into(),
            issuer: "authz".into(),
            audience: "orders".into(),
            lifetime_seconds: 60,
            claims: vec![],
        }
    }

    fn decided(route: &str) -> Decided<'_> {
        Decided {
            subject: "alice",
            subject_kind: "sub",
            idp: "https://idp",
            scopes: &[],
            tier: Tier::Authenticated,
            tenant: None,
            policy_version: 1,
            method: "GET",
            route,
            token_claims: None,
            token_expires_at: None,
        }
    }

    fn key(kid: &str, byte: u8, from: u64, until: u64) -> FeedKey {
        FeedKey {
            signer: ContextSigner::new(kid, &[byte; 32]),
            from,
            until,
        }
    }

    #[test]
    fn nothing_is_signed_without_a_key_for_now() {
        let mut signing = ContextSigning::default();
        assert!(signing.keyless_answer(), "reported once");
        assert!(!signing.keyless_answer());
        assert!(signing
            .context_for(&settings(), &keyer(), "token-1", &decided("items"), 100)
            .is_none());
        signing.set_keys(vec![key("k1", 1, 200, 300)]);
        assert!(!signing.has_key(100));
        assert!(signing
            .context_for(&settings(), &keyer(), "token-1", &decided("items"), 100)
            .is_none());
        assert!(signing
            .context_for(&settings(), &keyer(), "token-1", &decided("items"), 200)
            .is_some());
        assert!(!signing.keyless_answer(), "keys are held");
        assert!(!signing.set_keys(Vec::new()));
        assert!(signing.has_key(250), "an answer without keys keeps them");
        assert!(
            !signing.set_keys(vec![key("k1", 1, 200, 300)]),
            "the same keys"
        );
        assert!(
            signing.set_keys(vec![key("k2", 2, 300, 400)]),
            "a new period's"
        );
    }

    #[test]
    fn a_context_is_reused_per_token_method_and_route_while_half_its_life_is_left() {
        let mut signing = ContextSigning::default();
        signing.set_keys(vec![key("k1", 1, 0, 1000), key("k2", 2, 1000, 2000)]);
        let first = signing
            .context_for(&settings(), &keyer(), "token-1", &decided("items"), 100)
            .map(|(c, _)| c);
        assert_eq!(
            signing.context_for(&settings(), &keyer(), "token-1", &decided("items"), 130),
            first.clone().map(|c| (c, true))
        );
        let again = signing.context_for(&settings(), &keyer(), "token-1", &decided("items"), 131);
        assert!(
            again
                .as_ref()
                .is_some_and(|(c, reused)| Some(c) != first.as_ref() && !reused),
            "less than half its lifetime left: signed again"
        );
        assert!(signing
            .context_for(&settings(), &keyer(), "token-2", &decided("items"), 131)
            .is_some_and(|(_, reused)| !reused));
        let other_route = signing
            .context_for(&settings(), &keyer(), "token-1", &decided("admin"), 131)
            .unwrap()
            .0;
        let keys = KeySet::from_keys([
            (
                "k1".to_owned(),
                ContextSigner::new("k1", &[1; 32]).verifying_key(),
            ),
            (
                "k2".to_owned(),
                ContextSigner::new("k2", &[2; 32]).verifying_key(),
            ),
        ]);
        let verifier = Verifier::new("authz", "orders");
        assert!(verifier
            .verify(
                &other_route,
                &keys,
                &authz_context::Expected::new("GET", "admin"),
                131
            )
            .is_ok());
        assert!(verifier
            .verify(
                &other_route,
                &keys,
                &authz_context::Expected::new("GET", "items"),
                131
            )
            .is_err());
        // Another tenant on the same route is another context.
        let mut tenant_b = decided("items");
        tenant_b.tenant = Some("b");
        let for_b = signing
            .context_for(&settings(), &keyer(), "token-1", &tenant_b, 131)
            .unwrap();
        assert!(!for_b.1);
        assert_eq!(
            authz_context::Verifier::new("authz", "orders")
                .verify(
                    &for_b.0,
                    &keys,
                    &authz_context::Expected::new("GET", "items"),
                    131
                )
                .unwrap()
                .tenant
                .as_deref(),
            Some("b")
        );
        // After the rotation, new contexts carry the new key.
        let rotated = signing
            .context_for(&settings(), &keyer(), "token-3", &decided("items"), 1000)
            .unwrap()
            .0;
        assert!(verifier
            .verify(
                &rotated,
                &KeySet::from_keys([(
                    "k2".to_owned(),
                    ContextSigner::new("k2", &[2; 32]).verifying_key()
                )]),
                &authz_context::Expected::new("GET", "items"),
                1000
            )
            .is_ok());
    }
}
