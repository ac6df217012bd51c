//! JWT parsing and verification: any token text against RSA, EC and HMAC keys, through the
//! whole decision (route, token, requirements). Never panics; never allows a token that was
//! not signed by one of the keys (the fuzzer cannot sign).
#![no_main]

use authz_core::{decide, Decision, KeySet, Policy, RequestFacts};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn setup() -> &'static (Policy, KeySet) {
    static SETUP: OnceLock<(Policy, KeySet)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let rsa = dev_keys::SigningKey::generate(dev_keys::KeyAlgorithm::Rsa, "r").unwrap();
        let ec = dev_keys::SigningKey::generate(dev_keys::KeyAlgorithm::Es256, "e").unwrap();
        let jwks = serde_json::json!({"keys": [rsa.public_jwk(), ec.public_jwk()]});
        let config = serde_json::json!({
            "realm": "fuzz",
            "providers": [
                {"name": "a", "issuer": "https://a", "audiences": ["api"], "jwks": {"inline": jwks}},
                {"name": "h", "issuer": "https://h", "audiences": ["api"],
                 "jwks": {"inline": jwks},
                 "hmac_secret_base64": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}
            ],
            "routes": [{"name": "r", "match": {"prefix": "/"}, "tier": "authenticated",
                        "require": {"scopes": ["read"], "tenant": {"claim": "t", "path_segment": 2}}}],
            "default": {"tier": "authenticated"}
        });
        let policy = Policy::from_json(config.to_string().as_bytes()).unwrap();
        let keys = KeySet::from_jwks_value(&jwks).unwrap();
        (policy, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (policy, keys) = setup();
    let authorization = format!("Bearer {text}");
    let request = RequestFacts {
        method: "GET",
        path: "/t/acme/x",
        authorization: Some(&authorization),
    };
    let decision = decide(policy, &request, |_| Some(keys), 1_700_000_000);
    if let Decision::Allow { .. } = decision {
        panic!("an unsigned token was allowed: {text:?}");
    }
    let _ = authz_core::verify::jws_typ(text);
});
