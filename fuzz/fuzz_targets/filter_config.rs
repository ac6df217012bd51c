//! The filter's plugin configuration: any bytes are refused with problems or accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = authz_core::Policy::from_json(data) {
        let _ = policy.routes.find("GET", "/a/b");
    }
});
