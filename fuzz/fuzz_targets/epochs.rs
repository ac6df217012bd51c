//! `/admin/epochs` answers (format 2, the change feed) as the filter reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = authz_core::epochs::Changes::parse(data);
});
