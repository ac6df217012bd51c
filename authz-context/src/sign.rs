//! Signing contexts (the authorization layer's side): a key with its `kid` and its encoded JWS
//! header, made once per key so a signature costs one Ed25519 signing and one JSON encoding.

use crate::{Claims, Header, ALG, TYP};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// A signing key and what is fixed for every context it signs.
#[derive(Clone)]
pub struct ContextSigner {
    kid: String,
    key: SigningKey,
    /// `base64url(header) + "."`.
    header_prefix: String,
}

impl std::fmt::Debug for ContextSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContextSigner({})", self.kid)
    }
}

/// A signing key that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyError(pub String);

impl std::fmt::Display for SigningKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "context signing key: {}", self.0)
    }
}

impl std::error::Error for SigningKeyError {}

impl ContextSigner {
    /// A signer of the Ed25519 key whose 32-byte secret is `secret`.
    pub fn new(kid: &str, secret: &[u8; 32]) -> ContextSigner {
        let header = Header {
            alg: ALG.into(),
            typ: TYP.into(),
            kid: kid.into(),
        };
        let header_json = serde_json::to_vec(&header).unwrap_or_default();
        ContextSigner {
            kid: kid.into(),
            key: SigningKey::from_bytes(secret),
            header_prefix: format!("{}.", URL_SAFE_NO_PAD.encode(header_json)),
        }
    }

    /// [`ContextSigner::new`] from the secret in base64url (how the change feed carries it).
    pub fn from_base64(kid: &str, secret: &str) -> Result<ContextSigner, SigningKeyError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| SigningKeyError(format!("{kid}: not base64url")))?;
        let secret = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| SigningKeyError(format!("{kid}: not 32 bytes")))?;
        Ok(ContextSigner::new(kid, &secret))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key services verify with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The secret in base64url (for the change feed; never log it).
    pub fn secret_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.to_bytes())
    }

    /// The compact JWS of `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let claims_json = serde_json::to_vec(claims).unwrap_or_default();
        let mut jws =
            String::with_capacity(self.header_prefix.len() + claims_json.len() * 4 / 3 + 90);
        jws.push_str(&self.header_prefix);
        URL_SAFE_NO_PAD.encode_string(claims_json, &mut jws);
        let signature = self.key.sign(jws.as_bytes());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut jws);
        jws
    }
}
