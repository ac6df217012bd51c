//! The filter's request handling with arbitrary headers, through the SDK's real entry points
//! and our host bindings, against an in-process fake host (`fake_host.rs`). Input: a method
//! line, a path line, then `name: value` lines, all raw bytes. The filter must answer every
//! request (continue, a local response, or a pause for a Check call) and never panic; a
//! request without a valid token must never reach a privileged route.
#![no_main]

mod fake_host;

use fake_host::HOST;
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicU32, Ordering};

extern "C" {
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, size: usize) -> bool;
    fn proxy_on_request_headers(context_id: u32, headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_log(context_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
    fn proxy_on_tick(context_id: u32);
}

const ROOT: u32 = 1;
static NEXT_CONTEXT: AtomicU32 = AtomicU32::new(2);

const CONFIG: &str = r#"{
  "realm": "fuzz",
  "providers": [{"name": "a", "issuer": "https://a", "audiences": ["api"],
                 "jwks": {"remote": {"cluster": "idp", "path": "/jwks", "min_refetch_interval_seconds": 1}}}],
  "routes": [
    {"name": "health", "match": {"exact": "/healthz"}, "tier": "public"},
    {"name": "admin", "match": {"prefix": "/admin"}, "tier": "privileged"},
    {"name": "tenant", "match": {"regex": "/t/[^/]+/x"}, "tier": "standard_write",
     "require": {"tenant": {"claim": "tenant", "path_segment": 2}}}
  ],
  "default": {"tier": "authenticated"},
  "headers": {"claims": {"tenant": "x-auth-tenant"}},
  "server": {"cluster": "authz", "timeout_ms": 100, "epochs_cluster": "authz_admin",
             "epochs_token": "fuzz-epochs-token-4f2a9c7e", "poll_interval_ms": 250}
}"#;

fn start() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        HOST.with(|h| h.borrow_mut().config = CONFIG.as_bytes().to_vec());
        wasm_filter::_initialize();
        // SAFETY: the SDK's entry points, called as the host would.
        unsafe {
            proxy_on_context_create(ROOT, 0);
            assert!(proxy_on_vm_start(ROOT, 0));
            assert!(proxy_on_configure(ROOT, CONFIG.len()), "the fuzz config was refused");
        }
    });
}

fn parse(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut lines = data.split(|b| *b == b'\n');
    let method = lines.next().unwrap_or_default().to_vec();
    let path = lines.next().unwrap_or_default().to_vec();
    let mut headers = vec![(b":method".to_vec(), method), (b":path".to_vec(), path)];
    for line in lines {
        let split = line.windows(2).position(|w| w == b": ");
        let (name, value) = match split {
            Some(at) => (&line[..at], &line[at + 2..]),
            None => (line, &b""[..]),
        };
        headers.push((name.to_ascii_lowercase(), value.to_vec()));
    }
    headers
}

fuzz_target!(|data: &[u8]| {
    start();
    let headers = parse(data);
    let path = headers[1].1.to_ascii_lowercase();
    let authorized = headers.iter().any(|(k, _)| k == b"authorization");
    let count = headers.len();
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.request = headers;
        h.responded = None;
    });
    let context = NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the SDK's entry points, called as the host would.
    let action = unsafe {
        proxy_on_context_create(context, ROOT);
        proxy_on_request_headers(context, count, true)
    };
    let responded = HOST.with(|h| h.borrow().responded);
    // Continue (0) without a local response means the request goes upstream.
    if action == 0 && responded.is_none() {
        let canonical = authz_core::routes::match_path(&String::from_utf8_lossy(&path));
        let admin = path.starts_with(b"/admin")
            || path.starts_with(b"/%61dmin")
            || canonical == "/admin"
            || canonical.starts_with("/admin/");
        assert!(!admin, "a privileged path went upstream without a server decision");
        assert!(path.starts_with(b"/"), "a target that is not origin-form went upstream");
        assert!(
            authorized || canonical == "/healthz",
            "a request without a token went upstream on a protected route"
        );
    }
    // SAFETY: as above.
    unsafe {
        proxy_on_log(context);
        proxy_on_done(context);
        proxy_on_delete(context);
        if context % 64 == 0 {
            proxy_on_tick(ROOT);
        }
    }
});
