//! Hashes of tokens: the SHA-256 digest (revocations, shared caches, log labels: tokens
//! themselves are never logged) and a keyed fast hash for per-process cache keys.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

/// A keyed 128-bit hash of a token (SipHash-1-3 under a secret key) for in-memory cache keys on
/// the hot path, where a SHA-256 per request costs more than everything else the filter does.
///
/// Safe for that use because the key is secret and random per process: without it nobody can
/// aim a token at another token's key, and 128 bits make accidental collisions irrelevant. Not
/// a substitute for [`token_digest`] wherever a hash leaves the process (revocations, logs).
#[derive(Clone)]
pub struct TokenKeyer {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for TokenKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeyer(..)")
    }
}

impl TokenKeyer {
    /// A keyer with the given secret key (callers bring randomness: this crate has no I/O).
    pub fn new(key: [u64; 2]) -> TokenKeyer {
        TokenKeyer {
            k0: key[0],
            k1: key[1],
        }
    }

    /// The token's cache key.
    pub fn key(&self, token: &str) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(token.as_bytes());
        h.finish128().as_u128()
    }

    /// The key of several fields together (each length-prefixed, so fields cannot run into
    /// each other).
    pub fn key_of(&self, parts: &[&[u8]]) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        for part in parts {
            h.write(&(part.len() as u64).to_le_bytes());
            h.write(part);
        }
        h.finish128().as_u128()
    }
}

/// The full SHA-256 of a token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The SHA-256 of what a compact JWS's signature covers (`header.payload`, domain-separated),
/// or `None` for a token that is not a compact JWS: three `.`-separated parts whose first is a
/// base64url JSON object with an `alg` (a dotted opaque token such as PASETO's
/// `v4.local.…` is not one: keyed on its signed part, a revocation of one would name them
/// all).
///
/// A revocation by token is keyed on this, not on the token's bytes: one signed content can
/// have several encodings that all verify (an ECDSA signature `(r, s)` and `(r, n−s)`), so a
/// denylist of raw tokens or their hashes lets the other form through (OWASP's JWT cheat
/// sheet). Only ever used to refuse, never to accept: a token with this digest and a forged
/// signature is refused too, which is what a revocation wants. Caches that remember an
/// accepted token stay keyed on its whole bytes.
pub fn signed_part_digest(token: &str) -> Option<[u8; 32]> {
    let mut parts = token.split('.');
    let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || header.is_empty() || payload.is_empty() {
        return None;
    }
    let decoded = URL_SAFE_NO_PAD.decode(header).ok()?;
    let is_jws_header = serde_json::from_slice::<serde_json::Value>(&decoded)
        .ok()
        .is_some_and(|h| h.get("alg").is_some_and(serde_json::Value::is_string));
    if !is_jws_header {
        return None;
    }
    let mut hasher = Sha256::new();
    hasher.update(b"authz/jws-signed-part\0");
    hasher.update(header.as_bytes());
    hasher.update(b".");
    hasher.update(payload.as_bytes());
    Some(hasher.finalize().into())
}

/// What a revocation of `token` is keyed on: [`signed_part_digest`] for a JWS, else the
/// SHA-256 of the whole token.
pub fn revocation_digest(token: &str) -> [u8; 32] {
    signed_part_digest(token).unwrap_or_else(|| token_digest(token))
}

/// The first 12 hex characters of the SHA-256 of a token (48 bits): enough to correlate log
/// lines, far too little to recover or replay anything.
pub fn token_label(token: &str) -> String {
    digest_label(&token_digest(token))
}

/// The log label of an already computed digest (see [`token_label`]).
pub fn digest_label(digest: &[u8; 32]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest as 64 lower-case hex characters (how revoked token hashes travel).
pub fn digest_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex characters back into a digest.
pub fn parse_digest_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_short_hex_and_does_not_contain_the_token() {
        let token = "abc.def.ghi";
        let label = token_label(token);
        assert_eq!(label.len(), 12);
        assert!(label.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!label.contains("abc"));
        assert_ne!(token_label("abc.def.ghj"), label);
        let digest = token_digest(token);
        assert_eq!(parse_digest_hex(&digest_hex(&digest)), Some(digest));
        assert_eq!(parse_digest_hex("zz"), None);
    }

    #[test]
    fn a_revocation_covers_every_signature_of_the_same_signed_part() {
        // {"alg":"ES256"}
        let h = "eyJhbGciOiJFUzI1NiJ9";
        let a = revocation_digest(&format!("{h}.eyJw.c2lnLTE"));
        assert_eq!(a, revocation_digest(&format!("{h}.eyJw.c2lnLTI")));
        assert_ne!(a, revocation_digest(&format!("{h}.eyJx.c2lnLTE")));
        assert_ne!(a, token_digest(&format!("{h}.eyJw.c2lnLTE")));
        // Not a JWS: the whole token (PASETO's `v4.local.…` shares its first two parts).
        for opaque in [
            "ory_at_abc.def",
            "opaque",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "v4.local.c2VjcmV0",
            "eyJh.eyJw.c2ln",
        ] {
            assert_eq!(signed_part_digest(opaque), None, "{opaque}");
            assert_eq!(revocation_digest(opaque), token_digest(opaque));
        }
    }
}

#[cfg(test)]
mod keyer_tests {
    use super::*;

    #[test]
    fn keys_depend_on_the_secret_and_the_token() {
        let a = TokenKeyer::new([1, 2]);
        let b = TokenKeyer::new([3, 4]);
        assert_eq!(a.key("t1"), a.key("t1"));
        assert_ne!(a.key("t1"), a.key("t2"));
        assert_ne!(
            a.key("t1"),
            b.key("t1"),
            "another process cannot predict our keys"
        );
        assert!(!format!("{a:?}").contains('1'), "the key is not printed");
    }
}
