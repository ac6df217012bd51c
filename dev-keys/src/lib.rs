//! Signing keys for development and tests: generation (RSA, P-256, P-384, Ed25519), JWK
//! export, and compact JWS signing, including deliberately broken tokens (`alg: none`, HMAC
//! with a public key as secret) that tests use to prove the verifier refuses them.
//!
//! This crate is never linked into the filter or the server; it exists so the dev IdP and the
//! tests share one implementation of "make a key, publish it, sign with it".

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};

/// The kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA 2048, signing RS256 by default (PS* and RS384/512 also possible).
    Rsa,
    /// P-256, ES256.
    Es256,
    /// P-384, ES384.
    Es384,
    /// Ed25519, EdDSA.
    Ed25519,
}

impl KeyAlgorithm {
    /// The JWS algorithm this key signs with by default.
    pub fn default_alg(self) -> Algorithm {
        match self {
            KeyAlgorithm::Rsa => Algorithm::RS256,
            KeyAlgorithm::Es256 => Algorithm::ES256,
            KeyAlgorithm::Es384 => Algorithm::ES384,
            KeyAlgorithm::Ed25519 => Algorithm::EdDSA,
        }
    }
}

/// A private key with its `kid` and public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    encoding: EncodingKey,
    public_jwk: Value,
    /// Bytes of the public key (DER or raw point), used to forge HMAC-with-public-key tokens.
    public_bytes: Vec<u8>,
    /// The private key as PEM (PKCS#1 RSA or PKCS#8), for programs that load keys from files.
    private_pem: String,
}

/// PEM armour of DER bytes under `label`.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Errors from key generation or signing.
#[derive(Debug)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn split_point(sec1: &[u8]) -> Result<(&[u8], &[u8]), KeyError> {
    if sec1.first() != Some(&4) || sec1.len() % 2 != 1 {
        return Err(KeyError("expected an uncompressed sec1 point".into()));
    }
    let half = (sec1.len() - 1) / 2;
    Ok((&sec1[1..1 + half], &sec1[1 + half..]))
}

impl SigningKey {
    /// Generates a fresh key with the given `kid`.
    pub fn generate(algorithm: KeyAlgorithm, kid: &str) -> Result<SigningKey, KeyError> {
        let err = |what: &str, e: &dyn std::fmt::Display| KeyError(format!("{what}: {e}"));
        let (encoding, public_jwk, public_bytes, private_pem) = match algorithm {
            KeyAlgorithm::Rsa => {
                let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
                    .map_err(|e| err("rsa keygen", &e))?;
                let der = private.to_pkcs1_der().map_err(|e| err("rsa der", &e))?;
                let public = private.to_public_key();
                let jwk = json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                    "n": b64(&public.n_bytes()), "e": b64(&public.e_bytes()),
                });
                (
                    EncodingKey::from_rsa_der(der.as_bytes()),
                    jwk,
                    public.n_bytes().to_vec(),
                    pem("RSA PRIVATE KEY", der.as_bytes()),
                )
            }
            KeyAlgorithm::Es256 => {
                use p256::elliptic_curve::Generate as _;
                let private = p256::ecdsa::SigningKey::generate();
                let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&private)
                    .map_err(|e| err("p256 der", &e))?;
                let point = p256::PublicKey::from(private.verifying_key()).to_sec1_bytes();
                let (x, y) = split_point(&point)?;
                let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid, "x": b64(x), "y": b64(y)});
                (
                    EncodingKey::from_ec_der(der.as_bytes()),
                    jwk,
                    point.to_vec(),
                    pem("PRIVATE KEY", der.as_bytes()),
                )
            }
            KeyAlgorithm::Es384 => {
                use p384::elliptic_curve::Generate as _;
                let private = p384::ecdsa::SigningKey::generate();
                let der = p384::pkcs8::EncodePrivateKey::to_pkcs8_der(&private)
                    .map_err(|e| err("p384 der", &e))?;
                let point = p384::PublicKey::from(private.verifying_key()).to_sec1_bytes();
                let (x, y) = split_point(&point)?;
                let jwk = json!({"kty": "EC", "crv": "P-384", "use": "sig", "alg": "ES384", "kid": kid, "x": b64(x), "y": b64(y)});
                (
                    EncodingKey::from_ec_der(der.as_bytes()),
                    jwk,
                    point.to_vec(),
                    pem("PRIVATE KEY", der.as_bytes()),
                )
            }
            KeyAlgorithm::Ed25519 => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| err("ed25519 seed", &e))?;
                let private = ed25519_dalek::SigningKey::from_bytes(&seed);
                let der = private.to_pkcs8_der().map_err(|e| err("ed25519 der", &e))?;
                let public = private.verifying_key().to_bytes();
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid, "x": b64(&public)});
                (
                    EncodingKey::from_ed_der(der.as_bytes()),
                    jwk,
                    public.to_vec(),
                    pem("PRIVATE KEY", der.as_bytes()),
                )
            }
        };
        Ok(SigningKey {
            kid: kid.to_owned(),
            algorithm,
            encoding,
            public_jwk,
            public_bytes,
            private_pem,
        })
    }

    /// The private key as PEM (`RSA PRIVATE KEY` for RSA, PKCS#8 `PRIVATE KEY` otherwise).
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// The public JWK for a JWKS document.
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// The public JWK without its `alg` member (so the key type alone fixes the algorithms).
    pub fn public_jwk_without_alg(&self) -> Value {
        let mut jwk = self.public_jwk.clone();
        if let Some(object) = jwk.as_object_mut() {
            object.remove("alg");
        }
        jwk
    }

    /// Signs `claims` with this key's default algorithm and its `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, KeyError> {
        self.sign_with(
            self.algorithm.default_alg(),
            &json!({"kid": self.kid}),
            claims,
        )
    }

    /// Signs `claims` with an explicit algorithm; `extra_header` members (e.g. `kid`, `typ`)
    /// are merged into the header.
    pub fn sign_with(
        &self,
        alg: Algorithm,
        extra_header: &Value,
        claims: &Value,
    ) -> Result<String, KeyError> {
        sign_raw(alg, extra_header, claims, &self.encoding)
    }

    /// A token with `alg: HS256` whose HMAC secret is this key's *public* key bytes: the
    /// classic algorithm-confusion forgery.
    pub fn forge_hmac_with_public_key(&self, claims: &Value) -> Result<String, KeyError> {
        sign_hmac(&self.public_bytes, &json!({"kid": self.kid}), claims)
    }
}

/// Fills `bytes` from the operating system's random source.
pub fn random_bytes(bytes: &mut [u8]) -> Result<(), KeyError> {
    getrandom::fill(bytes).map_err(|e| KeyError(format!("random: {e}")))
}

/// Signs with an HMAC secret (HS256).
pub fn sign_hmac(secret: &[u8], extra_header: &Value, claims: &Value) -> Result<String, KeyError> {
    let key = EncodingKey::from_secret(secret).map_err(|e| KeyError(format!("hmac key: {e}")))?;
    sign_raw(Algorithm::HS256, extra_header, claims, &key)
}

fn header_with(alg: &str, extra_header: &Value) -> Value {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let (Some(target), Some(extra)) = (header.as_object_mut(), extra_header.as_object()) {
        for (k, v) in extra {
            target.insert(k.clone(), v.clone());
        }
    }
    header
}

fn sign_raw(
    alg: Algorithm,
    extra_header: &Value,
    claims: &Value,
    key: &EncodingKey,
) -> Result<String, KeyError> {
    let header = header_with(&format!("{alg:?}"), extra_header);
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg)
        .map_err(|e| KeyError(format!("sign: {e}")))?;
    Ok(format!("{input}.{signature}"))
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned_token(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// Replaces a token's payload with `claims`, keeping the original header and signature.
pub fn with_swapped_payload(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().unwrap_or_default();
    let _ = parts.next();
    let signature = parts.next().unwrap_or_default();
    format!(
        "{header}.{}.{signature}",
        b64(claims.to_string().as_bytes())
    )
}

/// Flips one bit in the middle of the signature (kept valid base64url).
pub fn with_flipped_signature(token: &str) -> String {
    let Some((input, signature)) = token.rsplit_once('.') else {
        return token.to_owned();
    };
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
    let middle = bytes.len() / 2;
    if let Some(byte) = bytes.get_mut(middle) {
        *byte ^= 0x01;
    }
    format!("{input}.{}", b64(&bytes))
}

/// The other valid form of an ECDSA-signed token (ES256 or ES384): the same header and
/// payload with the signature `(r, n − s)`, which verifies as well as `(r, s)` (ECDSA
/// signatures are malleable). `None` for a token whose signature is not 64 or 96 bytes.
pub fn with_malleated_ecdsa_signature(token: &str) -> Option<String> {
    // The group orders of P-256 and P-384, big-endian.
    const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
    const P384_N: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973";
    let (input, signature) = token.rsplit_once('.')?;
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let half = bytes.len() / 2;
    let order = match bytes.len() {
        64 => P256_N,
        96 => P384_N,
        _ => return None,
    };
    let n: Vec<u8> = (0..order.len() / 2)
        .map(|i| u8::from_str_radix(&order[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    // s := n − s, big-endian with borrow.
    let s = &mut bytes[half..];
    let mut borrow = 0i16;
    for i in (0..s.len()).rev() {
        let mut d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        s[i] = d as u8;
    }
    Some(format!("{input}.{}", b64(&bytes)))
}

/// A JWKS document holding the given keys' public halves.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()})
}
