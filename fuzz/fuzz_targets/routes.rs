//! Route matching on any method and path: the canonical path is stable (matching it again
//! changes nothing), a privileged prefix is never escaped by case or `;` parameters, and a path
//! the default `requests` rules accept keeps its structure when an upstream decodes it (no new
//! separator, no dot segment, no backslash).
#![no_main]

use authz_core::routes::match_path;
use authz_core::{Policy, Tier};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let config = serde_json::json!({
            "providers": [{"name": "a", "issuer": "https://a", "audiences": ["api"],
                           "jwks": {"inline": {"keys": [{"kty": "EC", "crv": "P-256",
                               "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                               "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}}}],
            "routes": [
                {"name": "health", "match": {"exact": "/healthz"}, "tier": "public"},
                {"name": "admin", "match": {"prefix": "/admin/"}, "tier": "privileged"},
                {"name": "re", "match": {"regex": "/t/[^/]+/x"}, "tier": "standard_write"},
                {"name": "read", "match": {"prefix": "/api", "methods": ["GET"]}, "tier": "authenticated"}
            ],
            "default": {"tier": "authenticated"}
        });
        Policy::from_json(config.to_string().as_bytes()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, path) = text.split_once(' ').unwrap_or(("GET", text));
    let routes = &policy().routes;
    let canonical = match_path(path);
    assert_eq!(match_path(&canonical), canonical, "canonical path is not stable");
    let route = routes.find(method, path);
    assert_eq!(route.name, routes.find_matched(method, &canonical).name);
    let lower = canonical.to_ascii_lowercase();
    if lower == "/admin" || lower.starts_with("/admin/") {
        assert_eq!(route.tier, Tier::Privileged, "{path} escaped the admin route");
    }
    let _ = authz_core::decision::bearer_token(text);
    let strict = authz_core::target::RequestRules::default();
    if strict.screen(path, false).is_ok() {
        let raw = authz_core::routes::path_only(path);
        let decoded = decode_once(raw.as_bytes());
        let separators = |b: &[u8]| b.iter().filter(|c| **c == b'/').count();
        assert_eq!(separators(&decoded), separators(raw.as_bytes()), "{path}: a new separator");
        assert!(!decoded.contains(&b'\\'), "{path}: a backslash");
        assert!(
            !decoded.split(|c| *c == b'/').any(|s| s == b"." || s == b".."),
            "{path}: a dot segment"
        );
    }
});

/// Percent-decodes every escape once, as an upstream that decodes before routing would.
fn decode_once(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}
