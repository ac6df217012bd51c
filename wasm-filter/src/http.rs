//! The HTTP context: one per request. Strips client-sent copies of the headers the filter
//! sets (named by `filter_core::read_request`), hands the request to the worker, and applies the result: continue with headers, a
//! deny response, a pause while keys are fetched, or a pause while the ext_authz server is
//! asked (its answer arrives here, in `on_grpc_call_response`).

use crate::effects::{apply_final, dispatch_fetch, on_fetch_answer};
use crate::envoy_host::FilterWorker;
use crate::host;
use authz_core::ext_authz_proto::{encode_check_request, CheckFacts, CHECK_METHOD, CHECK_SERVICE};
use authz_core::{deny_response, DenyReason};
use filter_core::{Final, FinalAction, OwnedRequest, RequestStep, ServerCall};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub struct AuthzHttp {
    context_id: u32,
    worker: Option<Rc<RefCell<FilterWorker>>>,
    /// The Check call in flight for this request, if any.
    server_call: Option<(u32, ServerCall, OwnedRequest)>,
}

impl AuthzHttp {
    pub fn new(context_id: u32, worker: Option<Rc<RefCell<FilterWorker>>>) -> AuthzHttp {
        AuthzHttp {
            context_id,
            worker,
            server_call: None,
        }
    }
}

/// The Check request Envoy's native ext_authz filter would send for this request (read after
/// our headers were stripped; values that are not UTF-8 are passed on lossily).
fn check_facts(call: &ServerCall, request: &OwnedRequest) -> CheckFacts {
    let headers: HashMap<String, String> = host::request_headers()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(b":"))
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    let source = host::property(&["source", "address"]).unwrap_or_default();
    let (address, port) = match source.rsplit_once(':') {
        Some((ip, port)) => (
            ip.trim_matches(['[', ']']).to_owned(),
            port.parse().unwrap_or(0),
        ),
        None => (source, 0),
    };
    CheckFacts {
        id: headers.get("x-request-id").cloned().unwrap_or_default(),
        method: request.method.clone(),
        path: request.path.clone(),
        host: host::request_header(":authority").unwrap_or_default(),
        scheme: host::request_header(":scheme").unwrap_or_default(),
        protocol: host::property(&["request", "protocol"]).unwrap_or_default(),
        headers,
        source_address: (!address.is_empty()).then_some(address),
        source_port: port,
        tier: call.tier.as_str().to_owned(),
        client_locality: node_locality(),
        background: false,
    }
}

/// `region/zone` of this Envoy's node (`xds.node.locality`), when configured; read once per
/// VM (it cannot change while Envoy runs).
pub(crate) fn node_locality() -> Option<String> {
    thread_local! {
        static LOCALITY: std::cell::OnceCell<Option<String>> = const { std::cell::OnceCell::new() };
    }
    LOCALITY.with(|cell| {
        cell.get_or_init(|| {
            let region = host::property(&["xds", "node", "locality", "region"]).unwrap_or_default();
            let zone = host::property(&["xds", "node", "locality", "zone"]).unwrap_or_default();
            (!region.is_empty() || !zone.is_empty()).then(|| format!("{region}/{zone}"))
        })
        .clone()
    })
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

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Some((token, call, request)) = self.server_call.take() else {
            return;
        };
        if token != token_id {
            self.server_call = Some((token, call, request));
            return;
        }
        let body = host::grpc_response_body(status_code, response_size);
        let now = host::now_ms().unwrap_or(0);
        let decision = worker.borrow_mut().on_server_reply(
            self.context_id,
            &request,
            &call,
            status_code,
            body,
            now,
        );
        apply_final(&decision, true);
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
            return apply_final(&decision, false);
        };
        // One read of the header map, as bytes (a client may send any byte Envoy lets
        // through): the core picks up what it decides on and names the client-sent copies of
        // our headers (and stripped override headers) to remove.
        let read = filter_core::read_request(host::request_headers(), &worker.borrow().policy);
        for name in &read.remove {
            host::remove_request_header(name);
        }
        let request = match read.request {
            Ok(request) => request,
            Err(unreadable) => {
                let decision = worker.borrow().unreadable(self.context_id, &unreadable);
                return apply_final(&decision, false);
            }
        };
        let step = match host::now_us() {
            Some(now_us) => worker
                .borrow_mut()
                .on_request(self.context_id, request, now_us),
            None => RequestStep::Done(worker.borrow().internal_deny(self.context_id, &request)),
        };
        match step {
            RequestStep::Done(decision) => apply_final(&decision, false),
            RequestStep::Wait(order) => {
                // The answer comes back to this context, which then wakes every request
                // waiting on it (this one included).
                if let Some(order) = order {
                    dispatch_fetch(&worker, &order, self.context_id);
                }
                Action::Pause
            }
            RequestStep::CallServer(call, request) => {
                let message = encode_check_request(check_facts(&call, &request));
                match host::dispatch_grpc(
                    &call.cluster,
                    CHECK_SERVICE,
                    CHECK_METHOD,
                    &message,
                    call.timeout,
                ) {
                    Some(token) => {
                        worker.borrow().server_call_started();
                        self.server_call = Some((token, call, request));
                        Action::Pause
                    }
                    None => {
                        let decision = worker.borrow().server_call_not_started(
                            self.context_id,
                            &request,
                            &call,
                        );
                        apply_final(&decision, false)
                    }
                }
            }
        }
    }

    fn on_log(&mut self) {
        if let Some(worker) = &self.worker {
            worker.borrow_mut().forget(self.context_id);
        }
    }
}
