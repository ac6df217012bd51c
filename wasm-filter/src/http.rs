//! The HTTP context: one per request. Strips client-sent copies of the headers the filter
//! sets (named by `filter_core::read_request`), hands the request to the core as an event, and
//! returns what the core decided: continue with headers, a deny response, or a pause (for keys,
//! or for the ext_authz server, whose answer arrives here, in `on_grpc_call_response`).

use crate::driver::{apply_final, CallKind, Driver};
use crate::host;
use authz_core::{deny_response, DenyReason};
use filter_core::{CallOutcome, Event, Final, FinalAction};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct AuthzHttp {
    context_id: u32,
    driver: Option<Rc<Driver>>,
}

impl AuthzHttp {
    pub fn new(context_id: u32, driver: Option<Rc<Driver>>) -> AuthzHttp {
        AuthzHttp { context_id, driver }
    }
}

impl Context for AuthzHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(driver) = &self.driver {
            let outcome = CallOutcome::Http {
                status: host::call_response_status(),
                body: host::call_response_body(body_size),
            };
            driver.call_ended(CallKind::Http, token_id, outcome, self.context_id);
        }
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(driver) = &self.driver {
            let outcome = CallOutcome::Grpc {
                status: status_code,
                body: host::grpc_response_body(status_code, response_size),
            };
            driver.call_ended(CallKind::Grpc, token_id, outcome, self.context_id);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(driver) = &self.driver {
            driver.request_ended(self.context_id);
        }
        true
    }
}

impl HttpContext for AuthzHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(driver) = self.driver.clone() else {
            // No valid configuration: fail closed.
            let response = deny_response(&DenyReason::Internal, "api");
            let decision = Final {
                context_id: self.context_id,
                action: FinalAction::Deny(response),
            };
            return apply_final(&decision, false);
        };
        // One read of the header map, as bytes (a client may send any byte Envoy lets
        // through): the core picks up what it decides on and names the client-sent copies of
        // our headers (and stripped override headers) to remove.
        let read =
            filter_core::read_request(host::request_headers(), &driver.worker.borrow().policy);
        for name in &read.remove {
            host::remove_request_header(name);
        }
        let context_id = self.context_id;
        let now_us = host::now_us();
        let event = Event::for_request(context_id, read.request, now_us.is_some());
        let now_us = now_us.unwrap_or_else(|| driver.now_us());
        driver.handle(event, now_us);
        // No decision yet: paused until keys arrive or the server answers.
        let action = driver
            .run(context_id, Some(context_id), now_us)
            .unwrap_or(Action::Pause);
        driver.arm_timer(now_us / 1000);
        action
    }

    fn on_log(&mut self) {
        if let Some(driver) = &self.driver {
            driver.request_ended(self.context_id);
        }
    }
}
