//! A request's verdict and the one mapping from it to the wire: the HTTP answer (through
//! [`deny_response`]) and the ext_authz `CheckResponse` a server sends. The server answers
//! every Check from here; the filter answers its own denials from [`deny_response`] and
//! relays the server's with `ext_authz_proto::decode_reply`, the inverse of
//! [`Verdict::check_response`] (tested as such below). So a client sees the same bytes for
//! the same reason whichever component decided.
//!
//! What it does not do: decide. Phases of the filter and of the server produce a verdict.

use crate::decision::{deny_response, DenyReason};
use crate::ext_authz_proto::{
    CacheDirective, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpStatus,
    OkHttpResponse, RpcStatus,
};

/// gRPC status of an allowed Check.
pub const GRPC_OK: i32 = 0;
/// gRPC status of a denied Check (`PERMISSION_DENIED`; Envoy reads the HTTP answer beside it).
pub const GRPC_PERMISSION_DENIED: i32 = 7;
/// `HeaderValueOption.append_action` `OVERWRITE_IF_EXISTS_OR_ADD`: a header we set replaces
/// whatever the client sent under that name.
pub const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

/// How a request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Continue upstream after removing `remove` and setting `set`.
    Allow {
        set: Vec<(String, String)>,
        remove: Vec<String>,
    },
    /// Answer with [`deny_response`] for the reason.
    Deny(DenyReason),
}

impl Verdict {
    /// `allow` or `deny`, for logs and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Verdict::Allow { .. } => "allow",
            Verdict::Deny(_) => "deny",
        }
    }

    /// `ok` or the deny reason's label, for logs and metrics (never sent to the client).
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Allow { .. } => "ok",
            Verdict::Deny(reason) => reason.as_str(),
        }
    }

    /// The ext_authz reply for this verdict, with `directive` as its dynamic metadata.
    pub fn check_response(&self, realm: &str, directive: &CacheDirective) -> CheckResponse {
        let status = |code| RpcStatus {
            code,
            message: String::new(),
        };
        let metadata = Some(directive.to_metadata());
        match self {
            Verdict::Allow { set, remove } => CheckResponse {
                status: Some(status(GRPC_OK)),
                ok_response: Some(OkHttpResponse {
                    headers: set.iter().map(|(k, v)| header(k, v)).collect(),
                    headers_to_remove: remove.clone(),
                }),
                denied_response: None,
                dynamic_metadata: metadata,
            },
            Verdict::Deny(reason) => {
                let response = deny_response(reason, realm);
                CheckResponse {
                    status: Some(status(GRPC_PERMISSION_DENIED)),
                    ok_response: None,
                    denied_response: Some(DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: i32::from(response.status),
                        }),
                        headers: response.headers.iter().map(|(k, v)| header(k, v)).collect(),
                        body: response.body.to_owned(),
                    }),
                    dynamic_metadata: metadata,
                }
            }
        }
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
        append_action: OVERWRITE_IF_EXISTS_OR_ADD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision_cache::CachedOutcome;
    use crate::ext_authz_proto::{decode_reply, encode};
    use crate::VerifyFailure;

    /// Every reason a host can deny for.
    fn every_reason() -> Vec<DenyReason> {
        vec![
            DenyReason::MissingToken,
            DenyReason::NotBearer,
            DenyReason::Token(VerifyFailure::Expired),
            DenyReason::Token(VerifyFailure::WrongAudience),
            DenyReason::InsufficientScope,
            DenyReason::ClaimMismatch,
            DenyReason::TenantMismatch,
            DenyReason::KeysUnavailable,
            DenyReason::ServerRequired,
            DenyReason::Internal,
            DenyReason::BadRequest,
            DenyReason::Revoked,
            DenyReason::Inactive,
            DenyReason::IdpUnavailable,
            DenyReason::SharedStateUnconfirmed,
            DenyReason::RevocationsIncomplete,
            DenyReason::Deadline,
            DenyReason::RateLimited,
            DenyReason::StepUp {
                www_authenticate: "Bearer error=\"insufficient_user_authentication\"".into(),
            },
        ]
    }

    #[test]
    fn a_denial_reaches_the_filter_as_the_same_http_answer() {
        let directive = CacheDirective {
            ttl_ms: 2000,
            policy_version: 3,
            ..CacheDirective::default()
        };
        for reason in every_reason() {
            let wire = encode(&Verdict::Deny(reason.clone()).check_response("api", &directive));
            let reply = decode_reply(&wire).unwrap();
            let expected = deny_response(&reason, "api");
            assert_eq!(
                reply.outcome,
                CachedOutcome::Deny {
                    status: expected.status,
                    headers: expected
                        .headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), v.clone()))
                        .collect(),
                    body: expected.body.to_owned(),
                },
                "{reason:?}"
            );
            assert_eq!(reply.directive, directive);
        }
    }

    #[test]
    fn denials_differ_only_by_status_class() {
        let unauthorized = deny_response(&DenyReason::MissingToken, "api");
        let unavailable = deny_response(&DenyReason::ServerRequired, "api");
        for reason in every_reason() {
            let response = deny_response(&reason, "api");
            match reason {
                DenyReason::StepUp { .. } => assert_eq!(response.status, 401),
                _ if response.status == 401 => assert_eq!(response, unauthorized, "{reason:?}"),
                _ if response.status == 503 => assert_eq!(response, unavailable, "{reason:?}"),
                _ => {}
            }
        }
        let limited = deny_response(&DenyReason::RateLimited, "api");
        assert_eq!(limited.status, 429);
        assert!(limited.headers.contains(&("retry-after", "1".to_owned())));
    }

    #[test]
    fn an_allow_carries_its_headers_and_removals() {
        let verdict = Verdict::Allow {
            set: vec![("x-auth-subject".into(), "alice".into())],
            remove: vec!["authorization".into()],
        };
        let wire = encode(&verdict.check_response("api", &CacheDirective::default()));
        let reply = decode_reply(&wire).unwrap();
        assert_eq!(
            reply.outcome,
            CachedOutcome::Allow {
                headers: vec![("x-auth-subject".into(), "alice".into())],
                remove: vec!["authorization".into()],
            }
        );
        assert_eq!((verdict.outcome(), verdict.reason()), ("allow", "ok"));
    }
}
