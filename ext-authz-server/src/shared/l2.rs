//! The shared introspection cache (L2): results other instances fetched, under
//! `HMAC(secret, sha256(token))`, the policy version and the last flush, sealed with ChaCha20-Poly1305 (the
//! Redis key bound as associated data). Redis never holds a token, a token hash, or a readable
//! claim; an entry that does not open is a miss.

use super::Shared;
use crate::cached::Cached;
use crate::versions::TokenKey;
use authz_core::introspection::Introspection;
use authz_core::token_hash::digest_hex;
use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::sync::Arc;

impl Shared {
    fn cache_key(&self, key: &TokenKey) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key)
            .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
        mac.update(key);
        let tag: [u8; 32] = mac.finalize().into_bytes().into();
        // After a flush (an incident switch) the key names it too: every entry stored before
        // is out of reach, on every instance, without a scan of Redis.
        let flushed = match self.versions.flushed_at_ms() {
            0 => String::new(),
            at => format!("f{at}"),
        };
        format!(
            "{}{}{flushed}:{}",
            self.keys.cache,
            self.versions.policy_version(),
            digest_hex(&tag)
        )
    }

    fn seal(&self, redis_key: &str, entry: &Cached) -> Option<Vec<u8>> {
        let plain = serde_json::to_vec(&json!({
            "raw": entry.result.raw,
            "fetched_at_ms": entry.fetched_at_ms,
            "ttl_ms": entry.ttl_ms,
        }))
        .ok()?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: redis_key.as_bytes(),
                },
            )
            .ok()?;
        Some([nonce.as_slice(), &sealed].concat())
    }

    fn open(&self, redis_key: &str, bytes: &[u8]) -> Option<Cached> {
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: sealed,
                    aad: redis_key.as_bytes(),
                },
            )
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&plain).ok()?;
        Some(Cached {
            result: Introspection::from_value(v.get("raw")?.clone()).ok()?,
            fetched_at_ms: v.get("fetched_at_ms")?.as_u64()?,
            ttl_ms: v.get("ttl_ms")?.as_u64()?,
        })
    }

    /// A shared cached result for the token, if one is there and still alive.
    pub async fn cache_get(&self, key: &TokenKey) -> Option<Cached> {
        let mut conn = self.connection()?;
        let redis_key = self.cache_key(key);
        let got = Shared::with_timeout(
            self.config.op_timeout,
            redis::cmd("GET")
                .arg(&redis_key)
                .query_async::<Option<Vec<u8>>>(&mut conn),
        )
        .await;
        let bytes = match got {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                self.metrics
                    .inc("authz_shared_cache_total", &[("result", "miss")]);
                return None;
            }
            Err(e) => {
                self.error("cache_get", &e);
                return None;
            }
        };
        match self.open(&redis_key, &bytes) {
            Some(entry) if entry.alive_at(self.clock.now_ms()) => {
                self.metrics
                    .inc("authz_shared_cache_total", &[("result", "hit")]);
                Some(entry)
            }
            Some(_) => {
                self.metrics
                    .inc("authz_shared_cache_total", &[("result", "expired")]);
                None
            }
            None => {
                self.metrics
                    .inc("authz_shared_cache_total", &[("result", "unreadable")]);
                None
            }
        }
    }

    /// Stores a result for the other instances, in the background.
    pub fn cache_put(self: &Arc<Self>, key: TokenKey, entry: Arc<Cached>) {
        let remaining = entry.remaining_ms(self.clock.now_ms());
        if remaining == 0 || !entry.result.raw.contains_key("active") {
            return;
        }
        let Some(mut conn) = self.connection() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let redis_key = this.cache_key(&key);
            let Some(sealed) = this.seal(&redis_key, &entry) else {
                return;
            };
            let put = Shared::with_timeout(
                this.config.op_timeout,
                redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(sealed)
                    .arg("PX")
                    .arg(remaining)
                    .query_async::<()>(&mut conn),
            )
            .await;
            if let Err(e) = put {
                this.error("cache_put", &e);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::tests::shared;

    #[test]
    fn cache_entries_are_sealed_and_bound_to_their_key() {
        let s = shared();
        let token_key = [1u8; 32];
        let redis_key = s.cache_key(&token_key);
        assert!(redis_key.starts_with("t:intro:0:"));
        assert!(
            !redis_key.contains(&digest_hex(&token_key)),
            "the token hash is not the key"
        );
        let result =
            Introspection::parse(br#"{"active":true,"sub":"alice","scope":"read"}"#).unwrap();
        let entry = Cached {
            result,
            fetched_at_ms: 10,
            ttl_ms: 20,
        };
        let sealed = s.seal(&redis_key, &entry).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("alice"));
        let opened = s.open(&redis_key, &sealed).unwrap();
        assert_eq!(opened.result.subject.as_deref(), Some("alice"));
        assert_eq!((opened.fetched_at_ms, opened.ttl_ms), (10, 20));
        let other_key = s.cache_key(&[2u8; 32]);
        assert!(
            s.open(&other_key, &sealed).is_none(),
            "moved entries do not open"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(s.open(&redis_key, &tampered).is_none());
    }
}
