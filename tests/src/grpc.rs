//! Check calls to an ext_authz server over gRPC, as Envoy makes them: a request with the
//! method, path, headers and `context_extensions`, and the HTTP answer Envoy would send.

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use std::collections::HashMap;
use tonic::transport::Channel;

/// A client for the server whose gRPC port is `port` on loopback.
pub async fn connect(port: u16) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to the Check port")
}

pub fn check_request(path: &str, token: Option<&str>, tier: Option<&str>) -> CheckRequest {
    let mut headers = HashMap::new();
    if let Some(t) = token {
        headers.insert("authorization".to_owned(), format!("Bearer {t}"));
    }
    let mut extensions = HashMap::new();
    if let Some(t) = tier {
        extensions.insert("tier".to_owned(), t.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: path.into(),
                    headers,
                    ..HttpRequest::default()
                }),
                ..AttrRequest::default()
            }),
            context_extensions: extensions,
            ..AttributeContext::default()
        }),
    }
}

/// (HTTP status Envoy would send, headers) of a Check answer.
pub async fn check(
    client: &mut AuthorizationClient<Channel>,
    path: &str,
    token: Option<&str>,
) -> (u16, HashMap<String, String>) {
    let reply = client
        .check(check_request(path, token, None))
        .await
        .expect("check never fails at the grpc level")
        .into_inner();
    match reply.http_response {
        Some(HttpResponse::OkResponse(ok)) => (
            200,
            ok.headers
                .into_iter()
                .filter_map(|h| h.header)
                .map(|h| (h.key, h.value))
                .collect(),
        ),
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.map(|s| s.code as u16).unwrap_or(403),
            d.headers
                .into_iter()
                .filter_map(|h| h.header)
                .map(|h| (h.key, h.value))
                .collect(),
        ),
        other => panic!("no http response: {other:?}"),
    }
}
