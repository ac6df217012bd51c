//! The Check messages the core asks for (`filter_core::CheckOrder`), as Envoy's native ext_authz
//! filter would send them: read from the live request while its headers are handled, or from
//! what the core kept for a check after the answer.
//!
//! What it does not do: send them (the driver does), or decide anything.

use crate::host;
use authz_core::ext_authz_proto::{encode_check_request, CheckFacts};
use filter_core::{CheckOrder, CheckPurpose};
use std::collections::HashMap;

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
