//! The filter's hand-written Check messages (`authz_core::ext_authz_proto`, built for wasm32)
//! must be wire-compatible with Envoy's (`envoy-types`): what one encodes, the other decodes
//! with the same meaning.

use authz_core::ext_authz_proto as ours;
use envoy_types::ext_authz::v3::pb as theirs;
use envoy_types::pb::envoy::config::core::v3::address::Address as TheirAddress;
use prost::Message;
use std::collections::HashMap;

#[test]
fn our_check_request_decodes_as_envoys() {
    let request = ours::CheckRequest {
        attributes: Some(ours::AttributeContext {
            source: Some(ours::Peer {
                address: Some(ours::Address {
                    socket_address: Some(ours::SocketAddress {
                        address: "10.1.2.3".into(),
                        port_value: 4242,
                    }),
                }),
            }),
            request: Some(ours::Request {
                http: Some(ours::HttpRequest {
                    id: "req-1".into(),
                    method: "POST".into(),
                    headers: HashMap::from([("authorization".to_owned(), "Bearer t".to_owned())]),
                    path: "/admin/users?x=1".into(),
                    host: "api.example".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                }),
            }),
            context_extensions: HashMap::from([("tier".to_owned(), "privileged".to_owned())]),
        }),
    };
    let decoded =
        theirs::CheckRequest::decode(request.encode_to_vec().as_slice()).expect("envoy decodes it");
    let attributes = decoded.attributes.expect("attributes");
    let http = attributes.request.and_then(|r| r.http).expect("http");
    assert_eq!(
        (http.method.as_str(), http.path.as_str(), http.host.as_str()),
        ("POST", "/admin/users?x=1", "api.example")
    );
    assert_eq!(
        http.headers.get("authorization").map(String::as_str),
        Some("Bearer t")
    );
    assert_eq!(http.id, "req-1");
    assert_eq!(
        attributes
            .context_extensions
            .get("tier")
            .map(String::as_str),
        Some("privileged")
    );
    let address = attributes
        .source
        .and_then(|s| s.address)
        .and_then(|a| a.address)
        .expect("address");
    let TheirAddress::SocketAddress(socket) = address else {
        panic!("not a socket address")
    };
    assert_eq!(socket.address, "10.1.2.3");
}

#[test]
fn envoys_check_responses_decode_as_ours() {
    #[allow(deprecated)]
    let header = |k: &str, v: &str| theirs::HeaderValueOption {
        header: Some(theirs::HeaderValue {
            key: k.into(),
            value: v.into(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: theirs::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    };
    let metadata = authz_core::ext_authz_proto::CacheDirective {
        ttl_ms: 900,
        policy_version: 4,
        change_version: 12,
        subject: Some("alice".into()),
        subject_epoch: 1,
        state_unconfirmed: true,
        token_revoked: false,
    };
    let metadata_bytes = metadata.to_metadata().encode_to_vec();
    let their_metadata =
        envoy_types::pb::google::protobuf::Struct::decode(metadata_bytes.as_slice())
            .expect("struct");
    let ok = theirs::CheckResponse {
        status: Some(envoy_types::pb::google::rpc::Status {
            code: 0,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(theirs::HttpResponse::OkResponse(theirs::OkHttpResponse {
            headers: vec![header("x-auth-subject", "alice")],
            headers_to_remove: vec!["x-auth-issuer".into()],
            ..theirs::OkHttpResponse::default()
        })),
        dynamic_metadata: Some(their_metadata),
    };
    let decoded = ours::CheckResponse::decode(ok.encode_to_vec().as_slice()).expect("we decode it");
    assert_eq!(decoded.status.map(|s| s.code), Some(0));
    let ok_response = decoded.ok_response.expect("ok response");
    let h = ok_response.headers[0].header.clone().expect("header");
    assert_eq!(
        (h.key.as_str(), h.value.as_str()),
        ("x-auth-subject", "alice")
    );
    assert_eq!(
        ok_response.headers[0].append_action,
        theirs::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );
    assert_eq!(ok_response.headers_to_remove, vec!["x-auth-issuer"]);
    assert!(decoded.denied_response.is_none());
    assert_eq!(
        ours::CacheDirective::from_metadata(decoded.dynamic_metadata.as_ref()),
        metadata
    );

    let denied = theirs::CheckResponse {
        status: Some(envoy_types::pb::google::rpc::Status {
            code: 7,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(theirs::HttpResponse::DeniedResponse(
            theirs::DeniedHttpResponse {
                status: Some(theirs::HttpStatus { code: 401 }),
                headers: vec![header("www-authenticate", "Bearer realm=\"x\"")],
                body: "{}".into(),
            },
        )),
        dynamic_metadata: None,
    };
    let decoded =
        ours::CheckResponse::decode(denied.encode_to_vec().as_slice()).expect("we decode it");
    let d = decoded.denied_response.expect("denied");
    assert_eq!(d.status.map(|s| s.code), Some(401));
    assert_eq!(d.body, "{}");
    assert!(decoded.ok_response.is_none());
}
