//! The HTTP context: one per request. Strips client-sent copies of the headers the filter
//! sets, hands the request to the worker, and applies the result (continue with headers,
//! a deny response, or a pause while keys are fetched).

use crate::host;
use crate::root::{dispatch_fetch, on_fetch_answer};
use crate::worker::{Final, FinalAction, OwnedRequest, RequestStep, Worker};
use authz_core::{deny_response, DenyReason};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

pub struct AuthzHttp {
    context_id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
}

impl AuthzHttp {
    pub fn new(context_id: u32, worker: Option<Rc<RefCell<Worker>>>) -> AuthzHttp {
        AuthzHttp { context_id, worker }
    }
}

/// Applies a decision to the current effective context. `resume` is true when the request
/// was paused earlier (decided from the root context).
pub fn apply_final(decision: &Final, forward_token: bool, resume: bool) -> Action {
    match &decision.action {
        FinalAction::Allow { headers } => {
            for (name, value) in headers {
                host::set_request_header(name, value);
            }
            if !forward_token {
                host::remove_request_header("authorization");
            }
            if resume {
                host::resume_request();
            }
            Action::Continue
        }
        FinalAction::Deny(response) => {
            let headers: Vec<(&str, &str)> = response
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect();
            host::send_response(response.status, &headers, response.body.as_bytes());
            Action::Pause
        }
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
        if let Some(worker) = self.worker.clone() {
            on_fetch_answer(&worker, token_id, body_size, self.context_id);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(worker) = &self.worker {
            worker.borrow_mut().forget(self.context_id);
        }
        true
    }
}

impl HttpContext for AuthzHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            // No valid configuration: fail closed.
            let response = deny_response(&DenyReason::Internal, "api");
            let decision = Final {
                context_id: self.context_id,
                action: FinalAction::Deny(response),
            };
            return apply_final(&decision, false, false);
        };
        let forward_token = {
            let w = worker.borrow();
            for name in w.policy.headers.all() {
                host::remove_request_header(name);
            }
            w.policy.forward_token
        };
        let request = OwnedRequest {
            method: host::request_header(":method").unwrap_or_default(),
            path: host::request_header(":path").unwrap_or_default(),
            authorization: host::request_header("authorization"),
        };
        let step = match host::now_ms() {
            Some(now) => worker
                .borrow_mut()
                .on_request(self.context_id, request, now),
            None => RequestStep::Done(worker.borrow().internal_deny(self.context_id, &request)),
        };
        match step {
            RequestStep::Done(decision) => apply_final(&decision, forward_token, false),
            RequestStep::Wait(order) => {
                // The answer comes back to this context, which then wakes every request
                // waiting on it (this one included).
                if let Some(order) = order {
                    dispatch_fetch(&worker, &order, self.context_id);
                }
                Action::Pause
            }
        }
    }

    fn on_log(&mut self) {
        if let Some(worker) = &self.worker {
            worker.borrow_mut().forget(self.context_id);
        }
    }
}
