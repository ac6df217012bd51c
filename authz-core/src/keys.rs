//! Verification keys: parsing a JWKS document into a [`KeySet`], and the rule that ties each
//! key to the algorithms it may verify (no algorithm confusion).
//!
//! A key verifies a token only when the token's `alg` belongs to the key's type and curve, and
//! equals the JWK's own `alg` when the JWK names one. `oct` (symmetric) keys in a JWKS are
//! ignored: HMAC is accepted only from a secret configured inline for a provider
//! ([`VerificationKey::hmac`]), so a public key can never be used as an HMAC secret.
//! Keys with `use` other than `sig`, unknown key types and RSA moduli under 2048 or over 8192
//! bits are skipped and reported in [`KeySet::skipped`].
//!
//! This module does not fetch anything and does not decide when to refresh.

use crate::error::Error;
use crate::rsa_verify::RsaPublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The largest RSA modulus accepted, in bits (`ring`'s largest too, so both builds take the
/// same keys): preparing a key costs the square of its size, and a key set is read on every
/// fetch, so a published 64 KiB "key" must not stall a worker.
pub const MAX_RSA_BITS: usize = 8192;

/// The family (and curve) of a key, which fixes the algorithms it may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    /// Whether a token signed with `alg` may be checked with a key of this kind.
    pub fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
                | (KeyKind::Hmac, HS256 | HS384 | HS512)
        )
    }
}

/// One key that can verify signatures.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's `alg`, when it names one: then only that algorithm is accepted.
    pub pinned_alg: Option<Algorithm>,
    pub key: DecodingKey,
    /// RSA keys prepared for the fast `RS*` verifier ([`crate::rsa_verify`]).
    pub rsa: Option<std::sync::Arc<RsaPublicKey>>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("pinned_alg", &self.pinned_alg)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.accepts(alg) && self.pinned_alg.is_none_or(|pinned| pinned == alg)
    }

    /// An HMAC key from a secret configured inline for one provider.
    pub fn hmac(secret: &[u8]) -> Result<VerificationKey, Error> {
        if secret.len() < 32 {
            return Err(Error::InvalidJwks(
                "hmac secret must be at least 32 bytes".into(),
            ));
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|e| Error::InvalidJwks(format!("hmac secret: {e}")))?;
        Ok(VerificationKey {
            kid: None,
            kind: KeyKind::Hmac,
            pinned_alg: None,
            key,
            rsa: None,
        })
    }
}

/// The usable signing keys of one JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
    /// One line per JWK that was left out, saying why (for logs).
    pub skipped: Vec<String>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Fails when the document is not a JWKS or
    /// holds no usable signing key, so a caller can keep its last good set.
    pub fn from_jwks_json(document: &[u8]) -> Result<KeySet, Error> {
        let value: Value = serde_json::from_slice(document)
            .map_err(|e| Error::InvalidJwks(format!("not json: {e}")))?;
        KeySet::from_jwks_value(&value)
    }

    /// Same as [`KeySet::from_jwks_json`], from parsed JSON.
    pub fn from_jwks_value(value: &Value) -> Result<KeySet, Error> {
        let Some(entries) = value.get("keys").and_then(Value::as_array) else {
            return Err(Error::InvalidJwks("no \"keys\" array".into()));
        };
        let mut set = KeySet::default();
        for (index, entry) in entries.iter().enumerate() {
            match parse_jwk(entry) {
                Ok(key) => set.keys.push(key),
                Err(why) => set.skipped.push(format!("key {index}: {why}")),
            }
        }
        if set.keys.is_empty() {
            return Err(Error::InvalidJwks(format!(
                "no usable signing key ({} skipped: {})",
                set.skipped.len(),
                set.skipped.join("; ")
            )));
        }
        Ok(set)
    }

    /// Whether any key carries this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Parses a JWS `alg` name. `none` and unknown names give `None`.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        _ => return None,
    })
}

fn field<'a>(jwk: &'a Value, name: &str) -> Result<&'a str, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string member \"{name}\""))
}

fn parse_jwk(jwk: &Value) -> Result<VerificationKey, String> {
    if !jwk.is_object() {
        return Err("not an object".into());
    }
    if let Some(usage) = jwk.get("use") {
        if usage.as_str() != Some("sig") {
            return Err(format!("use is {usage}, not \"sig\""));
        }
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("kid is not a string".into()),
    };
    let pinned_alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(name)) => {
            Some(parse_algorithm(name).ok_or_else(|| format!("unsupported alg \"{name}\""))?)
        }
        Some(_) => return Err("alg is not a string".into()),
    };
    let kty = field(jwk, "kty")?;
    let mut rsa = None;
    let (kind, key) = match kty {
        "RSA" => {
            let n = field(jwk, "n")?;
            let e = field(jwk, "e")?;
            let modulus = URL_SAFE_NO_PAD
                .decode(n)
                .map_err(|_| "n is not base64url".to_string())?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant * 8 < MIN_RSA_BITS {
                return Err(format!("rsa modulus under {MIN_RSA_BITS} bits"));
            }
            if significant * 8 > MAX_RSA_BITS {
                return Err(format!("rsa modulus over {MAX_RSA_BITS} bits"));
            }
            let exponent = URL_SAFE_NO_PAD
                .decode(e)
                .map_err(|_| "e is not base64url".to_string())?;
            let prepared = RsaPublicKey::new(&modulus, &exponent)
                .ok_or("rsa key: even modulus, or exponent not odd in 3..2^64")?;
            rsa = Some(std::sync::Arc::new(prepared));
            let key =
                DecodingKey::from_rsa_components(n, e).map_err(|e| format!("rsa key: {e}"))?;
            (KeyKind::Rsa, key)
        }
        "EC" => {
            let (kind, coordinate_len) = match field(jwk, "crv")? {
                "P-256" => (KeyKind::EcP256, 32),
                "P-384" => (KeyKind::EcP384, 48),
                other => return Err(format!("unsupported curve \"{other}\"")),
            };
            let x = field(jwk, "x")?;
            let y = field(jwk, "y")?;
            for (name, coordinate) in [("x", x), ("y", y)] {
                let bytes = URL_SAFE_NO_PAD
                    .decode(coordinate)
                    .map_err(|_| format!("{name} is not base64url"))?;
                if bytes.len() != coordinate_len {
                    return Err(format!("{name} has the wrong length for the curve"));
                }
            }
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| format!("ec key: {e}"))?;
            (kind, key)
        }
        "OKP" => {
            let crv = field(jwk, "crv")?;
            if crv != "Ed25519" {
                return Err(format!("unsupported curve \"{crv}\""));
            }
            let x = field(jwk, "x")?;
            let bytes = URL_SAFE_NO_PAD
                .decode(x)
                .map_err(|_| "x is not base64url".to_string())?;
            if bytes.len() != 32 {
                return Err("x has the wrong length for Ed25519".into());
            }
            let key =
                DecodingKey::from_ed_components(x).map_err(|e| format!("ed25519 key: {e}"))?;
            (KeyKind::Ed25519, key)
        }
        "oct" => return Err("symmetric keys are not accepted from a jwks".into()),
        other => return Err(format!("unsupported kty \"{other}\"")),
    };
    if let Some(alg) = pinned_alg {
        if !kind.accepts(alg) {
            return Err(format!("alg {alg:?} does not match kty {kty}"));
        }
    }
    Ok(VerificationKey {
        kid,
        kind,
        pinned_alg,
        key,
        rsa,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const N_2048: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn rsa_key_serves_rs_and_ps_only() {
        let set = KeySet::from_jwks_value(
            &json!({"keys":[{"kty":"RSA","kid":"k1","n":N_2048,"e":"AQAB"}]}),
        )
        .unwrap();
        let key = &set.keys[0];
        assert!(key.accepts(Algorithm::RS256));
        assert!(key.accepts(Algorithm::PS512));
        assert!(
            !key.accepts(Algorithm::HS256),
            "a public key must never verify hmac"
        );
        assert!(!key.accepts(Algorithm::ES256));
        assert!(set.has_kid("k1"));
    }

    #[test]
    fn pinned_alg_narrows_the_key() {
        let set = KeySet::from_jwks_value(
            &json!({"keys":[{"kty":"RSA","alg":"RS256","n":N_2048,"e":"AQAB"}]}),
        )
        .unwrap();
        assert!(set.keys[0].accepts(Algorithm::RS256));
        assert!(!set.keys[0].accepts(Algorithm::RS512));
    }

    #[test]
    fn mismatched_alg_and_kty_is_skipped() {
        let err = KeySet::from_jwks_value(
            &json!({"keys":[{"kty":"RSA","alg":"ES256","n":N_2048,"e":"AQAB"}]}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn symmetric_short_and_encryption_keys_are_skipped() {
        let doc = json!({"keys":[
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"RSA","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","use":"enc","n":N_2048,"e":"AQAB"},
            {"kty":"RSA","kid":"ok","n":N_2048,"e":"AQAB"}
        ]});
        let set = KeySet::from_jwks_value(&doc).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.skipped.len(), 3);
    }

    #[test]
    fn rsa_moduli_past_8192_bits_are_skipped_before_any_arithmetic() {
        // Preparing a key costs the square of its size: a 64 KiB modulus in a published key
        // set would stall the worker reading it.
        let odd = |bytes: usize| {
            let mut n = vec![0xc5u8; bytes];
            n[bytes - 1] |= 1;
            URL_SAFE_NO_PAD.encode(n)
        };
        let doc = json!({"keys":[
            {"kty":"RSA","kid":"huge","n":odd(65_536),"e":"AQAB"},
            {"kty":"RSA","kid":"over","n":odd(1_025),"e":"AQAB"},
            {"kty":"RSA","kid":"largest","n":odd(1_024),"e":"AQAB"}
        ]});
        let started = std::time::Instant::now();
        let set = KeySet::from_jwks_value(&doc).unwrap();
        assert_eq!(set.keys.len(), 1, "{:?}", set.skipped);
        assert_eq!(set.keys[0].kid.as_deref(), Some("largest"));
        assert_eq!(set.skipped.len(), 2);
        assert!(
            set.skipped.iter().all(|s| s.contains("over 8192 bits")),
            "{:?}",
            set.skipped
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        assert!(KeySet::from_jwks_json(b"nope").is_err());
        assert!(KeySet::from_jwks_json(b"{}").is_err());
        assert!(KeySet::from_jwks_json(br#"{"keys":[]}"#).is_err());
    }

    #[test]
    fn ec_coordinates_must_fit_the_curve() {
        let short = URL_SAFE_NO_PAD.encode([1u8; 31]);
        let doc = json!({"keys":[{"kty":"EC","crv":"P-256","x":short,"y":short}]});
        assert!(KeySet::from_jwks_value(&doc).is_err());
    }

    #[test]
    fn none_is_not_an_algorithm() {
        assert_eq!(parse_algorithm("none"), None);
        assert_eq!(parse_algorithm("rs256"), None);
        assert_eq!(parse_algorithm("ES256"), Some(Algorithm::ES256));
    }

    #[test]
    fn hmac_secrets_must_be_long_enough() {
        assert!(VerificationKey::hmac(b"short").is_err());
        let key = VerificationKey::hmac(&[7u8; 32]).unwrap();
        assert!(key.accepts(Algorithm::HS256) && !key.accepts(Algorithm::RS256));
    }
}
