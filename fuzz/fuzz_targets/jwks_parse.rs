//! JWKS documents as an IdP (or anyone between it and us) could serve them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = authz_core::KeySet::from_jwks_json(data);
});
