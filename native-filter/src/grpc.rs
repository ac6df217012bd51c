//! Unary gRPC over an Envoy HTTP callout: the dynamic-module ABI has HTTP callouts and streams
//! but no gRPC client, so the Check call is framed here (RFC-less but simple: the gRPC over
//! HTTP/2 spec's length-prefixed message) and its status read from the answer's headers or
//! trailers.
//!
//! What it does not do: compression (the request says `grpc-encoding` is not used; a
//! compressed answer is a failure), streaming, or retries.

use crate::abi::Outgoing;
use authz_core::ext_authz_proto::{CHECK_METHOD, CHECK_SERVICE};
use filter_core::{CallOutcome, CheckOrder};

/// The Check call of `order` carrying `message`: the stream request's headers and framed body
/// (kept for as long as the request borrowing them is started).
pub struct CheckCall {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl CheckCall {
    pub fn new(order: &CheckOrder, message: &[u8]) -> CheckCall {
        CheckCall {
            headers: request_headers(&order.cluster, CHECK_SERVICE, CHECK_METHOD),
            body: frame(message),
        }
    }

    /// The request to start through `order`'s cluster, within its timeout.
    pub fn outgoing<'a>(&'a self, order: &'a CheckOrder) -> Outgoing<'a> {
        Outgoing {
            cluster: &order.cluster,
            headers: &self.headers,
            body: &self.body,
            timeout: order.timeout,
        }
    }
}

/// The request headers of a unary call of `service/method` to `authority`.
pub fn request_headers(authority: &str, service: &str, method: &str) -> Vec<(String, String)> {
    vec![
        (":method".into(), "POST".into()),
        (":path".into(), format!("/{service}/{method}")),
        (":authority".into(), authority.into()),
        (":scheme".into(), "http".into()),
        ("content-type".into(), "application/grpc".into()),
        ("te".into(), "trailers".into()),
    ]
}

/// `message` as one uncompressed gRPC frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The one message of a unary answer's body: `None` unless the body is exactly one
/// uncompressed frame.
pub fn unframe(body: &[u8]) -> Option<Vec<u8>> {
    let (head, rest) = body.split_at_checked(5)?;
    let (&flag, length) = head.split_first()?;
    let length = u32::from_be_bytes(length.try_into().ok()?) as usize;
    (flag == 0 && rest.len() == length).then(|| rest.to_vec())
}

/// The largest reply kept (a Check reply is a few hundred bytes): more is a failure.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// A unary call's answer as its stream's hooks deliver it: headers, data, trailers, then
/// complete (or reset).
#[derive(Debug, Default)]
pub struct GrpcReply {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(Vec<u8>, Vec<u8>)>,
    too_large: bool,
}

impl GrpcReply {
    pub fn headers(&mut self, headers: Vec<(Vec<u8>, Vec<u8>)>) {
        self.headers = headers;
    }

    pub fn data(&mut self, data: &[u8]) {
        if self.body.len() + data.len() > MAX_REPLY_BYTES {
            self.too_large = true;
            return;
        }
        self.body.extend_from_slice(data);
    }

    pub fn trailers(&mut self, trailers: Vec<(Vec<u8>, Vec<u8>)>) {
        self.trailers = trailers;
    }

    /// How the call ended: `completed` when the stream completed (not reset). Only an OK
    /// status with exactly one message carries a body.
    pub fn outcome(self, completed: bool) -> CallOutcome {
        if !completed {
            return CallOutcome::Grpc {
                status: UNAVAILABLE,
                body: None,
            };
        }
        let http_status = self
            .headers
            .iter()
            .find(|(name, _)| name.as_slice() == b":status")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok());
        let status = status(http_status, &self.headers, &self.trailers);
        if status != 0 {
            return CallOutcome::Grpc { status, body: None };
        }
        match unframe(&self.body).filter(|_| !self.too_large) {
            Some(message) => CallOutcome::Grpc {
                status: 0,
                body: Some(message),
            },
            None => CallOutcome::Grpc {
                status: UNKNOWN,
                body: None,
            },
        }
    }
}

/// gRPC's `UNKNOWN`: what a call whose status cannot be read counts as.
pub const UNKNOWN: u32 = 2;
/// gRPC's `UNAVAILABLE`: a call that got no HTTP answer.
pub const UNAVAILABLE: u32 = 14;

/// A unary call's status: `grpc-status` from the trailers, else from the headers (a
/// trailers-only answer); a non-200 `:status` or no readable status is [`UNKNOWN`].
pub fn status(
    http_status: Option<u16>,
    headers: &[(Vec<u8>, Vec<u8>)],
    trailers: &[(Vec<u8>, Vec<u8>)],
) -> u32 {
    if http_status != Some(200) {
        return match http_status {
            None => UNAVAILABLE,
            Some(_) => UNKNOWN,
        };
    }
    let find = |pairs: &[(Vec<u8>, Vec<u8>)]| {
        pairs
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(b"grpc-status"))
            .map(|(_, value)| std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()))
    };
    match find(trailers).or_else(|| find(headers)) {
        Some(Some(status)) => status,
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    #[test]
    fn frames_round_trip_and_anything_else_is_refused() {
        let message = b"hello".to_vec();
        assert_eq!(unframe(&frame(&message)), Some(message.clone()));
        assert_eq!(unframe(&frame(&[])), Some(vec![]));
        let mut compressed = frame(&message);
        compressed[0] = 1;
        assert_eq!(unframe(&compressed), None);
        let mut two = frame(&message);
        two.extend(frame(&message));
        assert_eq!(unframe(&two), None);
        assert_eq!(unframe(&[0, 0, 0]), None);
        assert_eq!(unframe(&frame(&message)[..7]), None);
    }

    #[test]
    fn the_status_comes_from_trailers_then_headers_and_failures_are_not_ok() {
        let ok = [pair("grpc-status", "0")];
        assert_eq!(status(Some(200), &[], &ok), 0);
        assert_eq!(status(Some(200), &[pair("grpc-status", "7")], &[]), 7);
        assert_eq!(
            status(
                Some(200),
                &[pair("grpc-status", "0")],
                &[pair("grpc-status", "13")]
            ),
            13
        );
        assert_eq!(status(Some(200), &[], &[]), UNKNOWN);
        assert_eq!(status(Some(200), &[], &[pair("grpc-status", "x")]), UNKNOWN);
        assert_eq!(status(Some(503), &[], &ok), UNKNOWN);
        assert_eq!(status(None, &[], &ok), UNAVAILABLE);
    }

    #[test]
    fn a_reply_carries_its_message_only_when_ok_and_whole() {
        let reply = |trailer: &str, body: &[u8]| {
            let mut reply = GrpcReply::default();
            reply.headers(vec![pair(":status", "200")]);
            reply.data(body);
            reply.trailers(vec![pair("grpc-status", trailer)]);
            reply
        };
        let ok = CallOutcome::Grpc {
            status: 0,
            body: Some(b"m".to_vec()),
        };
        assert_eq!(reply("0", &frame(b"m")).outcome(true), ok);
        assert_eq!(
            reply("0", &frame(b"m")).outcome(false),
            CallOutcome::Grpc {
                status: UNAVAILABLE,
                body: None
            }
        );
        assert_eq!(
            reply("7", &frame(b"m")).outcome(true),
            CallOutcome::Grpc {
                status: 7,
                body: None
            }
        );
        assert_eq!(
            reply("0", b"junk").outcome(true),
            CallOutcome::Grpc {
                status: UNKNOWN,
                body: None
            }
        );
        let mut huge = reply("0", &frame(b"m"));
        huge.data(&vec![0; MAX_REPLY_BYTES + 1]);
        assert_eq!(
            huge.outcome(true),
            CallOutcome::Grpc {
                status: UNKNOWN,
                body: None
            }
        );
    }
}
