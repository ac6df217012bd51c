//! The Check reply as envoy-types' message, built field by field from `authz_core`'s (same
//! fields, same meaning): no encode/decode round trip, so nothing can fail on the way and no
//! reply ever leaves without a status (a `CheckResponse` without one is an allow to Envoy).

use authz_core::ext_authz_proto as core;
use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc::Status;

/// `authz_core`'s reply in envoy-types' message. A reply the core built without a status
/// (none does) becomes a denial with status 7 (`PERMISSION_DENIED`).
pub fn to_envoy(response: &core::CheckResponse) -> CheckResponse {
    let http_response = match (&response.ok_response, &response.denied_response) {
        (_, Some(denied)) => Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: denied.status.as_ref().map(|s| HttpStatus { code: s.code }),
            headers: denied.headers.iter().map(header).collect(),
            body: denied.body.clone(),
        })),
        (Some(ok), None) => Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: ok.headers.iter().map(header).collect(),
            headers_to_remove: ok.headers_to_remove.clone(),
            ..OkHttpResponse::default()
        })),
        (None, None) => None,
    };
    let status = match &response.status {
        Some(status) if status.code != 0 || response.denied_response.is_none() => Status {
            code: status.code,
            message: status.message.clone(),
            details: Vec::new(),
        },
        // No status, or an OK status with a denial: denied.
        _ => Status {
            code: PERMISSION_DENIED,
            message: String::new(),
            details: Vec::new(),
        },
    };
    CheckResponse {
        status: Some(status),
        dynamic_metadata: response.dynamic_metadata.as_ref().map(to_struct),
        http_response,
    }
}

/// gRPC `PERMISSION_DENIED`.
const PERMISSION_DENIED: i32 = 7;

fn header(option: &core::HeaderValueOption) -> HeaderValueOption {
    HeaderValueOption {
        header: option.header.as_ref().map(|h| HeaderValue {
            key: h.key.clone(),
            value: h.value.clone(),
            ..HeaderValue::default()
        }),
        append_action: option.append_action,
        ..HeaderValueOption::default()
    }
}

fn to_struct(s: &prost_types::Struct) -> Struct {
    Struct {
        fields: s
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v)))
            .collect(),
    }
}

fn to_value(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind as K;
    Value {
        kind: v.kind.as_ref().map(|kind| match kind {
            K::NullValue(n) => Kind::NullValue(*n),
            K::NumberValue(n) => Kind::NumberValue(*n),
            K::StringValue(s) => Kind::StringValue(s.clone()),
            K::BoolValue(b) => Kind::BoolValue(*b),
            K::StructValue(s) => Kind::StructValue(to_struct(s)),
            K::ListValue(l) => Kind::ListValue(ListValue {
                values: l.values.iter().map(to_value).collect(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_core::decision_cache::CachedOutcome;
    use authz_core::ext_authz_proto::{decode_reply, encode, CacheDirective};
    use authz_core::{DenyReason, Verdict};

    /// Every verdict's reply has a status, and reads back (through the filter's decoder, from
    /// envoy-types' encoding) as the same outcome and directive.
    #[test]
    fn every_reply_has_a_status_and_means_what_the_core_built() {
        let directive = CacheDirective {
            ttl_ms: 5_000,
            policy_version: 3,
            change_version: 9,
            subject: Some("alice".into()),
            subject_epoch: 2,
            state_unconfirmed: true,
            token_revoked: false,
        };
        let mut verdicts = vec![Verdict::Allow {
            set: vec![("x-auth-subject".into(), "alice".into())],
            remove: vec!["authorization".into()],
        }];
        verdicts.extend(
            [
                DenyReason::MissingToken,
                DenyReason::Revoked,
                DenyReason::InsufficientScope,
                DenyReason::RateLimited,
                DenyReason::ServerRequired,
                DenyReason::BadRequest,
                DenyReason::Internal,
            ]
            .into_iter()
            .map(Verdict::Deny),
        );
        for verdict in verdicts {
            let core = verdict.check_response("unit", &directive);
            let envoy = to_envoy(&core);
            let status = envoy.status.as_ref().expect("a status");
            assert_eq!(
                status.code == 0,
                (verdict.outcome() == "allow"),
                "{verdict:?}"
            );
            use prost::Message;
            let read = decode_reply(&envoy.encode_to_vec()).expect("decodes");
            let expected = decode_reply(&encode(&core)).expect("decodes");
            assert_eq!(read, expected, "{verdict:?}");
            assert_eq!(read.directive, directive);
            assert_eq!(
                matches!(read.outcome, CachedOutcome::Allow { .. }),
                (verdict.outcome() == "allow")
            );
        }
    }

    #[test]
    fn a_reply_without_a_status_is_a_denial() {
        for response in [
            core::CheckResponse::default(),
            core::CheckResponse {
                status: Some(core::RpcStatus {
                    code: 0,
                    message: String::new(),
                }),
                denied_response: Some(core::DeniedHttpResponse::default()),
                ..core::CheckResponse::default()
            },
        ] {
            let envoy = to_envoy(&response);
            assert_eq!(envoy.status.map(|s| s.code), Some(PERMISSION_DENIED));
        }
    }
}
