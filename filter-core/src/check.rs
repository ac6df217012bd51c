//! The Check messages the core asks for ([`CheckOrder`]), as Envoy's native ext_authz filter
//! would send them: from the live request (its headers as the host read them, its source
//! address and protocol) for a request being decided, or from what the core kept for a check
//! after the answer. Every host builds them here, so the server sees the same message from the
//! Wasm and the native filter.
//!
//! What it does not do: read anything from the proxy (the host passes [`LiveRequest`]) or send
//! the message.

use crate::commands::{CheckOrder, CheckPurpose};
use authz_core::ext_authz_proto::{encode_check_request, Background, CheckFacts};
use std::collections::HashMap;

/// What the host read of the request being decided, after our headers were stripped.
#[derive(Debug, Clone, Copy)]
pub struct LiveRequest<'a> {
    /// Every header, pseudo-headers included, as bytes.
    pub headers: &'a [(Vec<u8>, Vec<u8>)],
    /// The downstream peer, `ip:port` or `[ip]:port` (Envoy's `source.address`).
    pub source: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2`, ... (Envoy's `request.protocol`).
    pub protocol: Option<&'a str>,
}

/// The Check message for `order`. A request being decided needs `live` (its own headers, read
/// while they are handled); `None` then means the message cannot be built. A check after the
/// answer is built from the kept method, path and credential alone.
pub fn check_message(
    order: &CheckOrder,
    live: Option<LiveRequest<'_>>,
    locality: Option<String>,
) -> Option<Vec<u8>> {
    let facts = match (order.purpose, live) {
        (CheckPurpose::Decide { .. }, Some(live)) => live_facts(order, live, locality),
        (CheckPurpose::Decide { .. }, None) => return None,
        (CheckPurpose::AfterAnswer, _) => CheckFacts {
            method: order.request.method.clone(),
            path: order.request.path.clone(),
            headers: order
                .request
                .authorization
                .iter()
                .map(|value| ("authorization".to_owned(), value.clone()))
                .collect(),
            tier: order.tier.as_str().to_owned(),
            client_locality: locality,
            background: Background::AfterAnswer,
            ..CheckFacts::default()
        },
    };
    Some(encode_check_request(facts))
}

/// The facts Envoy's native ext_authz filter would send for this request (values that are not
/// UTF-8 are passed on lossily).
fn live_facts(order: &CheckOrder, live: LiveRequest<'_>, locality: Option<String>) -> CheckFacts {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let pseudo = |name: &[u8]| {
        live.headers
            .iter()
            .find(|(k, _)| k.as_slice() == name)
            .map(|(_, v)| text(v))
            .unwrap_or_default()
    };
    let headers: HashMap<String, String> = live
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(b":"))
        .map(|(k, v)| (text(k), text(v)))
        .collect();
    let (address, port) = split_address(live.source.unwrap_or_default());
    CheckFacts {
        id: headers.get("x-request-id").cloned().unwrap_or_default(),
        method: order.request.method.clone(),
        path: order.request.path.clone(),
        host: pseudo(b":authority"),
        scheme: pseudo(b":scheme"),
        protocol: live.protocol.unwrap_or_default().to_owned(),
        headers,
        source_address: (!address.is_empty()).then_some(address),
        source_port: port,
        tier: order.tier.as_str().to_owned(),
        client_locality: locality,
        background: if order.as_after_answer {
            Background::BeforeAnswer
        } else {
            Background::No
        },
    }
}

/// `ip:port` or `[ip]:port` as (ip, port); an address without a port as (address, 0).
fn split_address(source: &str) -> (String, u32) {
    match source.rsplit_once(':') {
        Some((ip, port)) if !ip.is_empty() && port.parse::<u32>().is_ok() => (
            ip.trim_matches(['[', ']']).to_owned(),
            port.parse().unwrap_or(0),
        ),
        _ => (source.to_owned(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::OwnedRequest;
    use authz_core::Tier;
    use std::time::Duration;

    fn order(purpose: CheckPurpose) -> CheckOrder {
        CheckOrder {
            cluster: "authz".into(),
            timeout: Duration::from_millis(100),
            tier: Tier::Privileged,
            request: OwnedRequest {
                method: "GET".into(),
                path: "/admin/x".into(),
                authorization: Some("Bearer t".into()),
                trace_id: None,
            },
            purpose,
            as_after_answer: purpose == CheckPurpose::AfterAnswer,
        }
    }

    #[test]
    fn addresses_split_into_ip_and_port() {
        assert_eq!(split_address("10.0.0.1:443"), ("10.0.0.1".into(), 443));
        assert_eq!(split_address("[::1]:8080"), ("::1".into(), 8080));
        assert_eq!(split_address("unix:/tmp/s"), ("unix:/tmp/s".into(), 0));
        assert_eq!(split_address(""), ("".into(), 0));
    }

    #[test]
    fn a_request_being_decided_needs_its_live_headers() {
        let decide = order(CheckPurpose::Decide { context_id: 7 });
        assert!(check_message(&decide, None, None).is_none());
        let headers = vec![
            (b":authority".to_vec(), b"api.example".to_vec()),
            (b"x-request-id".to_vec(), b"r1".to_vec()),
            (b"x-junk".to_vec(), vec![0xff]),
        ];
        let live = LiveRequest {
            headers: &headers,
            source: Some("10.1.2.3:5555"),
            protocol: Some("HTTP/1.1"),
        };
        let facts = live_facts(&decide, live, Some("r/z".into()));
        assert_eq!(facts.host, "api.example");
        assert_eq!(facts.id, "r1");
        assert_eq!(facts.source_address.as_deref(), Some("10.1.2.3"));
        assert_eq!(facts.source_port, 5555);
        assert!(!facts.headers.contains_key(":authority"));
        assert_eq!(
            facts.headers.get("x-junk").map(String::as_str),
            Some("\u{fffd}")
        );
        assert!(check_message(&decide, Some(live), None).is_some());
        assert_eq!(facts.background, Background::No);
        // Checked before the answer (asynchronous verification off): marked so, and carrying
        // the client's address (the server's per-address limits apply).
        let first = CheckOrder {
            as_after_answer: true,
            ..decide.clone()
        };
        let facts = live_facts(&first, live, None);
        assert_eq!(facts.background, Background::BeforeAnswer);
        assert_eq!(facts.source_address.as_deref(), Some("10.1.2.3"));
    }

    #[test]
    fn a_check_after_the_answer_carries_only_the_kept_credential() {
        let after = order(CheckPurpose::AfterAnswer);
        let with = check_message(&after, None, None);
        assert!(with.is_some());
    }
}
