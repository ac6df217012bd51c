//! Carrying out what the core asks for, in Envoy: applying a decided request to the current
//! effective context, dispatching JWKS fetches, handing fetch answers back to the worker.
//! Shared by the root context and the HTTP contexts (an answer arrives at whichever context
//! dispatched the call).

use crate::envoy_host::FilterWorker;
use crate::host;
use filter_core::{FetchOrder, Final, FinalAction};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

/// Applies a decision to the current effective context. `resume` is true when the request
/// was paused earlier.
pub fn apply_final(decision: &Final, resume: bool) -> Action {
    match &decision.action {
        FinalAction::Allow { headers, remove } => {
            for name in remove {
                host::remove_request_header(name.as_bytes());
            }
            for (name, value) in headers {
                host::set_request_header(name, value);
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
        FinalAction::Respond {
            status,
            headers,
            body,
        } => {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            host::send_response(*status, &headers, body.as_bytes());
            Action::Pause
        }
    }
}

/// Applies decisions of paused requests from `home_context_id` (the context now running), by
/// switching the effective context to each request and back. The worker is not borrowed
/// while host calls run, since they may re-enter the filter.
pub fn apply_finals(finals: Vec<Final>, home_context_id: u32) {
    if finals.is_empty() {
        return;
    }
    for f in finals {
        if host::set_effective_context(f.context_id) {
            apply_final(&f, true);
        }
    }
    host::set_effective_context(home_context_id);
}

/// Dispatches a JWKS fetch from the current context (`context_id`), whose
/// `on_http_call_response` will receive the answer, and tells the worker how it went.
pub fn dispatch_fetch(worker: &Rc<RefCell<FilterWorker>>, order: &FetchOrder, context_id: u32) {
    match host::dispatch_get(&order.cluster, &order.authority, &order.path, order.timeout) {
        Some(token) => worker.borrow_mut().fetch_started(token, order, context_id),
        None => worker.borrow_mut().fetch_not_started(order),
    }
}

/// Hands a fetch answer that reached `context_id` to the worker and applies the decisions
/// it releases.
pub fn on_fetch_answer(
    worker: &Rc<RefCell<FilterWorker>>,
    token_id: u32,
    body_size: usize,
    context_id: u32,
) {
    if !worker.borrow().owns_fetch(token_id) {
        return;
    }
    let status = host::call_response_status();
    let body = host::call_response_body(body_size);
    let now = host::now_ms().unwrap_or(0);
    let finals = worker
        .borrow_mut()
        .on_fetch_response(token_id, status, body, now);
    apply_finals(finals, context_id);
    // A metadata answer is followed at once by the keys fetch it located.
    let follow_ups = worker.borrow_mut().take_follow_ups();
    for order in &follow_ups {
        dispatch_fetch(worker, order, context_id);
    }
}
