//! The server's YAML configuration (with `${NAME}` expansion): refused with problems or
//! accepted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ext_authz_server::config::ServerConfig::from_yaml_with_env(text, |name| {
        (name.len() < 8).then(|| format!("value-of-{name}-0123456789abcdef"))
    });
});
