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
    let digest = token_digest(token);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
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
    }
}
