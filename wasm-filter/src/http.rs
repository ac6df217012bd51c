//! The HTTP context: one per request. Strips client-sent copies of the headers the filter
//! sets (named by `filter_core::read_request`), hands the request to the core as an event, and
//! returns what the core decided: continue with headers, a deny response, or a pause (for keys,
//! or for the ext_authz server, whose answer arrives here, in `on_grpc_call_response`). Builds
//! the Check messages the core asks for.

use crate::driver::{apply_final, CallKind, Driver};
use crate::host;
use authz_core::ext_authz_proto::{encode_check_request, CheckFacts};
use authz_core::{deny_response, DenyReason};
use filter_core::{CallOutcome, CheckOrder, CheckPurpose, Event, Final, FinalAction};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::collections::HashMap;
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

/// The Check message for `order`: for a request being decided (it must be `current`, the
/// request whose headers are being handled: its live headers are read), what Envoy's native
/// ext_authz filter would send; for a check after the answer, its method, path and credential.
/// `None` when a request's check is asked for outside its own headers' handling.
pub(crate) fn check_message(order: &CheckOrder, current: Option<u32>) -> Option<Vec<u8>> {
    let facts = match order.purpose {
        CheckPurpose::Decide { context_id } if Some(context_id) == current => check_facts(order),
        CheckPurpose::Decide { .. } => return None,
        CheckPurpose::AfterAnswer => CheckFacts {
            method: order.request.method.clone(),
            path: order.request.path.clone(),
            headers: order
                .request
                .authorization
                .iter()
                .map(|value| ("authorization".to_owned(), value.clone()))
                .collect(),
            tier: order.tier.as_str().to_owned(),
            client_locality: node_locality(),
            background: true,
            ..CheckFacts::default()
        },
    };
    Some(encode_check_request(facts))
}

/// The Check request Envoy's native ext_authz filter would send for this request (read after
/// our headers were stripped; values that are not UTF-8 are passed on lossily).
fn check_facts(order: &CheckOrder) -> CheckFacts {
    let request = &order.request;
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
        tier: order.tier.as_str().to_owned(),
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
        let event = match (read.request, now_us) {
            (Err(unreadable), _) => Event::Unreadable {
                context_id,
                unreadable,
            },
            (Ok(request), Some(_)) => Event::Request {
                context_id,
                request,
            },
            (Ok(request), None) => Event::NoClock {
                context_id,
                request,
            },
        };
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
