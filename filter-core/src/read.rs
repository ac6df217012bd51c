//! Reading a request's headers, as bytes, into what the worker decides on, and naming the
//! headers the host must remove before anything else sees the request: every host (proxy-wasm
//! today, a native module next) calls [`read_request`] once with the whole header map.
//!
//! Removed: client copies of every header the filter or the server sets (the configured
//! names and the standard ones, `HeaderNames::all`, and the signed context's header), and method-override headers when the
//! policy strips them. Unreadable (a 400 from [`crate::Worker::unreadable`]): a method or path
//! that is not UTF-8, a path that is not origin-form, more than one `authorization` header,
//! and whatever `requests` refuses (`authz_core::target`: method overrides, encoded reserved
//! characters, paths not in normal form). An `authorization` value that is not UTF-8 is kept
//! as an empty (never valid) credential.

use crate::commands::OwnedRequest;
use authz_core::target::{is_method_override, Ambiguity};
use authz_core::Policy;

/// What [`read_request`] found.
#[derive(Debug)]
pub struct ReadRequest {
    /// `Err`: the request cannot be decided (a 400), with what was read of it.
    pub request: Result<OwnedRequest, Unreadable>,
    /// Header names (as they came) the host removes from the request.
    pub remove: Vec<Vec<u8>>,
}

/// A request the filter refuses to read, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub request: OwnedRequest,
    /// `None`: not UTF-8, not origin-form, or two credentials.
    pub ambiguity: Option<Ambiguity>,
}

/// Reads a request's headers (see the module doc).
pub fn read_request(
    headers: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    policy: &Policy,
) -> ReadRequest {
    let mut request = OwnedRequest::default();
    let mut remove = Vec::new();
    let mut readable = true;
    let mut overridden = false;
    let (mut traceparent, mut b3_trace_id) = (None, None);
    for (name, value) in headers {
        match name.as_slice() {
            b":method" if request.method.is_empty() => match String::from_utf8(value) {
                Ok(m) => request.method = m,
                Err(_) => readable = false,
            },
            b":path" if request.path.is_empty() => match String::from_utf8(value) {
                Ok(p) => request.path = p,
                Err(_) => readable = false,
            },
            b"authorization" => {
                if request.authorization.is_some() {
                    readable = false;
                }
                request.authorization = Some(String::from_utf8(value).unwrap_or_default());
            }
            b"traceparent" => traceparent = String::from_utf8(value).ok(),
            b"x-b3-traceid" => b3_trace_id = String::from_utf8(value).ok(),
            other => {
                if is_method_override(other) {
                    overridden = true;
                }
                let ours = policy
                    .headers
                    .all()
                    .chain(policy.context.as_ref().map(|c| c.header.as_str()))
                    .any(|ours| ours.as_bytes().eq_ignore_ascii_case(other));
                if ours || policy.requests.strips(other) {
                    remove.push(name);
                }
            }
        }
    }
    request.trace_id =
        authz_core::trace_context::trace_id(traceparent.as_deref(), b3_trace_id.as_deref());
    let request = if !readable || !authz_core::routes::is_origin_form(&request.path) {
        Err(Unreadable {
            request,
            ambiguity: None,
        })
    } else {
        match policy.requests.screen(&request.path, overridden) {
            Ok(()) => Ok(request),
            Err(ambiguity) => Err(Unreadable {
                request,
                ambiguity: Some(ambiguity),
            }),
        }
    };
    ReadRequest { request, remove }
}
