//! Check replies as a (compromised or broken) server could send them to the filter.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = authz_core::ext_authz_proto::decode_reply(data);
});
