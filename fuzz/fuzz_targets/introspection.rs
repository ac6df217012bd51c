//! RFC 7662 answers (single and batch) and the purpose rules applied to them.
#![no_main]

use authz_core::introspection::{parse_batch, Introspection};
use authz_core::verify::{check_purpose, Presence};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let provider = authz_core::Provider {
        name: "p".into(),
        issuer: "https://idp".into(),
        audiences: vec!["api".into()],
        clock_skew_seconds: 60,
        require_expiration: false,
        required_typ: Some("at+jwt".into()),
        refuse_id_tokens: true,
        max_lifetime_seconds: Some(86_400),
        client_grant: None,
        hmac_key: None,
    };
    if let Ok(answer) = Introspection::parse(data) {
        let claims = answer.as_claims();
        for presence in [Presence::Required, Presence::WhenPresent] {
            let _ = check_purpose(&provider, &claims, None, 1_700_000_000, presence);
        }
    }
    let _ = parse_batch(data, 3);
});
