//! A test fixture, never shipped: an HTTP filter that aborts its VM (a Rust panic under
//! `panic = "abort"`) when a request carries `x-crash-test`, and otherwise lets the request
//! through marked `x-vm-alive: 1`. The end-to-end tests run it under the same Wasm filter
//! settings as the real filter to show what Envoy does with a crashed VM: with
//! `failure_policy: FAIL_RELOAD` the crashing request fails closed and the VM is reloaded for
//! the next ones.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Crash) });
}}

struct Crash;

impl Context for Crash {}

impl RootContext for Crash {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Crash))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl HttpContext for Crash {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-crash-test").is_some() {
            panic!("crash requested by the test");
        }
        self.set_http_request_header("x-vm-alive", Some("1"));
        Action::Continue
    }
}
