//! Provider metadata documents (discovery) and the URL splitting the filter fetches keys with;
//! a verified JWT's claims turned into the answer the server authorizes with.
#![no_main]

use authz_core::discovery::{authority_and_path, parse};
use authz_core::introspection::Introspection;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let issuer = "https://idp.example/realms/a";
    if let Ok(metadata) = parse(data, issuer) {
        // Equal but for one trailing `/` (`same_issuer`: Hydra and Auth0 write one).
        assert!(
            authz_core::verify::same_issuer(&metadata.issuer, issuer),
            "only the configured issuer's document: {}",
            metadata.issuer
        );
        for url in [metadata.jwks_uri, metadata.introspection_endpoint].into_iter().flatten() {
            let (authority, path) = authority_and_path(&url).expect("a checked URL splits");
            assert!(!authority.is_empty() && path.starts_with('/'));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((authority, path)) = authority_and_path(text) {
            assert!(!authority.contains('/') && path.starts_with('/'));
        }
    }
    if let Ok(claims) = authz_core::Claims::from_json(data) {
        let answer = Introspection::from_verified_claims(&claims);
        assert!(answer.active);
        assert_eq!(answer.subject, claims.subject);
    }
});
