//! A token verification a host may run outside whatever guards its worker. The native module
//! shares one core between every worker thread behind a lock; a signature check held under it
//! (tens of µs of RSA) makes the other threads wait, and switch. So, for a request that needs a
//! verification:
//!
//! 1. under the lock, the host asks [`Worker::verification_outside`]: a request decided here
//!    (not by the server), with a bearer token that has no cached verification, gets a
//!    [`VerifyOutside`] holding the token, the providers and a snapshot of their key sets;
//! 2. without the lock, [`VerifyOutside::run`] verifies, as the worker would;
//! 3. under the lock again, [`Worker::offer_verified`] hands the result in, right before the
//!    request's event. The worker uses it for that token only, only if its keys have not
//!    changed meanwhile (the key generation) and only within the second it was made for;
//!    otherwise it verifies again itself. Screening (revocations, status lists), the route's
//!    rules and the caches are applied under the lock as always.
//!
//! A host without threads (proxy-wasm) does not need this: the worker verifies inline.

use crate::commands::OwnedRequest;
use crate::host::Host;
use crate::worker::Worker;
use authz_core::verify::verify;
use authz_core::{KeySet, Provider, Tier, VerifiedToken, VerifyFailure};
use std::sync::Arc;

/// What a verification comes to: the verified token, shared, or why it failed.
pub type VerifyResult = Result<Arc<VerifiedToken>, VerifyFailure>;

/// A verification to run outside the worker (see the module doc).
pub struct VerifyOutside {
    token: String,
    key: u128,
    generation: u64,
    providers: Arc<[Provider]>,
    keys: Vec<Option<Arc<KeySet>>>,
    max_bytes: usize,
    now: i64,
}

/// Its result, for [`Worker::offer_verified`].
pub struct Verified {
    key: u128,
    generation: u64,
    now: i64,
    result: VerifyResult,
}

impl VerifyOutside {
    /// Verifies the token against the snapshot, exactly as the worker would.
    pub fn run(self) -> Verified {
        let keys = &self.keys;
        let result = verify(
            &self.token,
            &self.providers,
            |i| keys.get(i).and_then(|k| k.as_deref()),
            self.max_bytes,
            self.now,
        )
        .map(Arc::new);
        Verified {
            key: self.key,
            generation: self.generation,
            now: self.now,
            result,
        }
    }
}

/// What the worker keeps of an offered verification until the request's event uses it.
pub(crate) struct Offered {
    verified: Verified,
    micros: Option<u64>,
}

impl Offered {
    /// The result, when it is for the token keyed `key`, under key generation `generation`,
    /// in second `now`; and how long it took (µs), when the host timed it.
    pub fn take_for(
        self,
        key: u128,
        generation: u64,
        now: i64,
    ) -> Option<(VerifyResult, Option<u64>)> {
        let v = self.verified;
        (v.key == key && v.generation == generation && v.now == now)
            .then_some((v.result, self.micros))
    }
}

impl<H: Host> Worker<H> {
    /// The verification `request` needs, when the host may run it outside the worker: a
    /// route this worker decides, not public, with a bearer token whose verification is not
    /// cached. `None`: the request's event needs nothing beforehand.
    pub fn verification_outside(
        &self,
        request: &OwnedRequest,
        now_us: u64,
    ) -> Option<VerifyOutside> {
        let now_ms = now_us / 1000;
        let token = request.bearer()?;
        // Refused by size under the lock, as cheaply as before; never copied.
        if token.len() > self.policy.max_token_bytes {
            return None;
        }
        // The hot path's question first: one keyed hash, one lookup.
        let key = self.caches.keyer.key(token);
        let generation = self.keys.generation();
        if self.caches.tokens.contains(&key, now_ms, generation, None) {
            return None;
        }
        if self.server_call_for(request, now_ms).is_some() {
            return None;
        }
        let route = self.policy.routes.find(&request.method, &request.path);
        if route.tier == Tier::Public {
            return None;
        }
        Some(VerifyOutside {
            token: token.to_owned(),
            key,
            generation,
            providers: Arc::clone(&self.providers),
            keys: self.keys.snapshot(),
            max_bytes: self.policy.max_token_bytes,
            now: (now_ms / 1000) as i64,
        })
    }

    /// Hands in a verification made outside (timed by the host: `micros`), for the request
    /// event that follows (see the module doc).
    pub fn offer_verified(&mut self, verified: Verified, micros: Option<u64>) {
        self.offered = Some(Offered { verified, micros });
    }
}
