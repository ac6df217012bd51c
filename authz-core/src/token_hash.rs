//! A short, non-reversible label for a token, for logs and cache keys. Tokens themselves are
//! never logged; this is what is logged instead.

use sha2::{Digest, Sha256};

/// The full SHA-256 of a token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
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
}
