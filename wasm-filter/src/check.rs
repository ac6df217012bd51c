//! The Check messages the core asks for (`filter_core::CheckOrder`): what this host reads of
//! the live request (its headers, source address and protocol) and of the node (its
//! locality), handed to `filter_core::check_message`, which builds them alike for every host.
//!
//! What it does not do: build the message itself, send it (the driver does), or decide
//! anything.

use crate::host;
use filter_core::{CheckOrder, CheckPurpose, LiveRequest};

/// The Check message for `order`: for a request being decided it must be `current`, the
/// request whose headers are being handled (its live headers are read); `None` when a
/// request's check is asked for outside its own headers' handling. `configured` is the
/// policy's `server.client_locality`, which wins over the node's.
pub(crate) fn check_message(
    order: &CheckOrder,
    current: Option<u32>,
    configured: Option<&str>,
) -> Option<Vec<u8>> {
    let locality = || configured.map(str::to_owned).or_else(node_locality);
    match order.purpose {
        CheckPurpose::Decide { context_id } if Some(context_id) == current => {
            let headers = host::request_headers();
            let source = host::property(&["source", "address"]);
            let protocol = host::property(&["request", "protocol"]);
            let live = LiveRequest {
                headers: &headers,
                source: source.as_deref(),
                protocol: protocol.as_deref(),
            };
            filter_core::check_message(order, Some(live), locality())
        }
        CheckPurpose::Decide { .. } => None,
        CheckPurpose::AfterAnswer => filter_core::check_message(order, None, locality()),
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
