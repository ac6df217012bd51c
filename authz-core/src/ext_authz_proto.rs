//! The subset of Envoy's `envoy.service.auth.v3` messages the Wasm filter sends and receives,
//! as `prost` structs with Envoy's field numbers, so the filter can speak the same Check API as
//! Envoy's native ext_authz filter without `envoy-types` (which does not build for wasm32).
//! Fields the filter never uses are left out; protobuf skips unknown fields, so the messages
//! stay wire-compatible. Compatibility with `envoy-types` is tested on the host in the server
//! crate (`tests/wire_compat.rs`).
//!
//! Also here: the dynamic-metadata keys through which the server tells the filter whether and
//! how long it may cache a decision ([`CacheDirective`]).

use prost::Message;
use std::collections::HashMap;

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    #[prost(map = "string, string", tag = "10")]
    pub context_extensions: HashMap<String, String>,
}

/// `AttributeContext.Peer` (address only).
#[derive(Clone, PartialEq, Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `envoy.config.core.v3.Address` (socket address only).
#[derive(Clone, PartialEq, Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, Message)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(uint32, tag = "3")]
    pub port_value: u32,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
    #[prost(string, tag = "6")]
    pub scheme: String,
    #[prost(string, tag = "10")]
    pub protocol: String,
}

/// `envoy.service.auth.v3.CheckResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
    #[prost(message, optional, tag = "4")]
    pub dynamic_metadata: Option<prost_types::Struct>,
}

/// `google.rpc.Status` (without details).
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.service.auth.v3.DeniedHttpResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DeniedHttpResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `envoy.service.auth.v3.OkHttpResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct OkHttpResponse {
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValueOption {
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The gRPC method the filter calls.
pub const CHECK_SERVICE: &str = "envoy.service.auth.v3.Authorization";
pub const CHECK_METHOD: &str = "Check";

/// Dynamic-metadata keys of a Check reply that tell a caching client what it may do.
pub mod metadata_keys {
    /// How long the decision may be reused, in ms (0 or absent: not cacheable).
    pub const CACHE_TTL_MS: &str = "authz_cache_ttl_ms";
    /// The policy version the decision was made under.
    pub const POLICY_VERSION: &str = "authz_policy_version";
    /// The server's change version at decision time (for `/admin/epochs?since=`).
    pub const CHANGE_VERSION: &str = "authz_change_version";
    /// The subject the decision is about, if any.
    pub const SUBJECT: &str = "authz_subject";
    /// The subject's epoch at decision time.
    pub const SUBJECT_EPOCH: &str = "authz_subject_epoch";
    /// Present and true when the server cannot confirm its revocation state is current.
    pub const STATE_UNCONFIRMED: &str = "authz_state_unconfirmed";
    /// Present and true when a background check found the (verified) token inactive at the
    /// IdP and the server revoked it: the filter revokes it too, at once.
    pub const TOKEN_REVOKED: &str = "authz_token_revoked";
}

/// What a Check reply's dynamic metadata says about caching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheDirective {
    pub ttl_ms: u64,
    pub policy_version: u64,
    pub change_version: u64,
    pub subject: Option<String>,
    pub subject_epoch: u64,
    /// The server could not confirm its revocation state is current (shared tier down): the
    /// reply must not renew a client's trust in what it cached before.
    pub state_unconfirmed: bool,
    /// A background check revoked the token (see `metadata_keys::TOKEN_REVOKED`).
    pub token_revoked: bool,
}

fn flag(s: &prost_types::Struct, key: &str) -> bool {
    matches!(
        s.fields.get(key).and_then(|v| v.kind.as_ref()),
        Some(prost_types::value::Kind::BoolValue(true))
    )
}

fn number(s: &prost_types::Struct, key: &str) -> Option<u64> {
    match s.fields.get(key)?.kind.as_ref()? {
        prost_types::value::Kind::NumberValue(n) if *n >= 0.0 && n.is_finite() => Some(*n as u64),
        _ => None,
    }
}

impl CacheDirective {
    /// Reads the directive from a reply's dynamic metadata; absent means "do not cache".
    pub fn from_metadata(metadata: Option<&prost_types::Struct>) -> CacheDirective {
        let Some(s) = metadata else {
            return CacheDirective::default();
        };
        CacheDirective {
            ttl_ms: number(s, metadata_keys::CACHE_TTL_MS).unwrap_or(0),
            policy_version: number(s, metadata_keys::POLICY_VERSION).unwrap_or(0),
            change_version: number(s, metadata_keys::CHANGE_VERSION).unwrap_or(0),
            subject: match s
                .fields
                .get(metadata_keys::SUBJECT)
                .and_then(|v| v.kind.as_ref())
            {
                Some(prost_types::value::Kind::StringValue(sub)) => Some(sub.clone()),
                _ => None,
            },
            subject_epoch: number(s, metadata_keys::SUBJECT_EPOCH).unwrap_or(0),
            state_unconfirmed: flag(s, metadata_keys::STATE_UNCONFIRMED),
            token_revoked: flag(s, metadata_keys::TOKEN_REVOKED),
        }
    }

    /// Writes the directive as dynamic metadata (the server side).
    pub fn to_metadata(&self) -> prost_types::Struct {
        use prost_types::value::Kind;
        let mut fields = std::collections::BTreeMap::new();
        let num = |n: u64| prost_types::Value {
            kind: Some(Kind::NumberValue(n as f64)),
        };
        fields.insert(metadata_keys::CACHE_TTL_MS.to_owned(), num(self.ttl_ms));
        fields.insert(
            metadata_keys::POLICY_VERSION.to_owned(),
            num(self.policy_version),
        );
        fields.insert(
            metadata_keys::CHANGE_VERSION.to_owned(),
            num(self.change_version),
        );
        fields.insert(
            metadata_keys::SUBJECT_EPOCH.to_owned(),
            num(self.subject_epoch),
        );
        for (set, key) in [
            (self.state_unconfirmed, metadata_keys::STATE_UNCONFIRMED),
            (self.token_revoked, metadata_keys::TOKEN_REVOKED),
        ] {
            if set {
                fields.insert(
                    key.to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::BoolValue(true)),
                    },
                );
            }
        }
        if let Some(sub) = &self.subject {
            fields.insert(
                metadata_keys::SUBJECT.to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(sub.clone())),
                },
            );
        }
        prost_types::Struct { fields }
    }
}

/// Encodes a message to protobuf bytes.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_directives_round_trip_through_metadata() {
        let d = CacheDirective {
            ttl_ms: 1500,
            policy_version: 3,
            change_version: 9,
            subject: Some("alice".into()),
            subject_epoch: 2,
            state_unconfirmed: false,
            token_revoked: false,
        };
        assert_eq!(CacheDirective::from_metadata(Some(&d.to_metadata())), d);
        let revoked = CacheDirective {
            token_revoked: true,
            ..d.clone()
        };
        assert_eq!(
            CacheDirective::from_metadata(Some(&revoked.to_metadata())),
            revoked
        );
        let unconfirmed = CacheDirective {
            state_unconfirmed: true,
            ..d
        };
        assert_eq!(
            CacheDirective::from_metadata(Some(&unconfirmed.to_metadata())),
            unconfirmed
        );
        assert_eq!(CacheDirective::from_metadata(None).ttl_ms, 0);
    }

    #[test]
    fn a_check_response_round_trips() {
        let r = CheckResponse {
            status: Some(RpcStatus {
                code: 7,
                message: String::new(),
            }),
            denied_response: Some(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "a".into(),
                        value: "b".into(),
                    }),
                    append_action: 2,
                }],
                body: "x".into(),
            }),
            ok_response: None,
            dynamic_metadata: None,
        };
        assert_eq!(CheckResponse::decode(encode(&r).as_slice()).unwrap(), r);
    }
}

/// The facts of a request the filter sends to the server.
#[derive(Debug, Clone, Default)]
pub struct CheckFacts {
    pub id: String,
    pub method: String,
    pub path: String,
    pub host: String,
    pub scheme: String,
    pub protocol: String,
    pub headers: HashMap<String, String>,
    /// `ip` of the client, if known.
    pub source_address: Option<String>,
    pub source_port: u32,
    pub tier: String,
    /// Where the calling proxy runs (`region/zone`), for the server's decision log.
    pub client_locality: Option<String>,
    /// A check of a route checked after the answer (`background_check_ms`).
    pub background: Background,
}

/// How a Check of a route checked after the answer (`background_check_ms`) is made: the server
/// asks the IdP about the token either way, and revokes it through the change feed when the IdP
/// refuses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Background {
    /// Not such a check.
    #[default]
    No,
    /// After the answer: the request was allowed already; the caller is the proxy (no client
    /// address, no per-address limit).
    AfterAnswer,
    /// Before the answer (asynchronous verification is switched off): a client waits, and the
    /// server's per-address limits apply as to any check.
    BeforeAnswer,
}

impl Background {
    /// The `context_extensions` value ([`BACKGROUND_EXTENSION`]).
    pub fn value(self) -> Option<&'static str> {
        match self {
            Background::No => None,
            Background::AfterAnswer => Some("1"),
            Background::BeforeAnswer => Some("before"),
        }
    }

    /// Reads a `context_extensions` value (anything else: not such a check).
    pub fn parse(value: Option<&str>) -> Background {
        match value {
            Some("1") => Background::AfterAnswer,
            Some("before") => Background::BeforeAnswer,
            _ => Background::No,
        }
    }
}

/// The `context_extensions` key marking a check of a route checked after the answer (see
/// [`Background`]).
pub const BACKGROUND_EXTENSION: &str = "authz_background";

/// The `context_extensions` key (and, lower-cased with an `x-authz-` prefix, the gRPC metadata
/// key native ext_authz can send through `initial_metadata`) naming the caller's locality.
pub const CLIENT_LOCALITY_EXTENSION: &str = "client_locality";

/// Encodes a Check request as Envoy's ext_authz filter would send it, with the tier (and the
/// proxy's locality, when known) in `context_extensions`.
pub fn encode_check_request(facts: CheckFacts) -> Vec<u8> {
    let source = facts.source_address.map(|address| Peer {
        address: Some(Address {
            socket_address: Some(SocketAddress {
                address,
                port_value: facts.source_port,
            }),
        }),
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(Request {
                http: Some(HttpRequest {
                    id: facts.id,
                    method: facts.method,
                    headers: facts.headers,
                    path: facts.path,
                    host: facts.host,
                    scheme: facts.scheme,
                    protocol: facts.protocol,
                }),
            }),
            context_extensions: [("tier".to_owned(), Some(facts.tier))]
                .into_iter()
                .chain([(CLIENT_LOCALITY_EXTENSION.to_owned(), facts.client_locality)])
                .chain([(
                    BACKGROUND_EXTENSION.to_owned(),
                    facts.background.value().map(str::to_owned),
                )])
                .filter_map(|(k, v)| Some((k, v?)))
                .collect(),
        }),
    }
    .encode_to_vec()
}

/// What a Check reply tells the filter to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub outcome: crate::decision_cache::CachedOutcome,
    pub directive: CacheDirective,
}

fn header_pairs(options: Vec<HeaderValueOption>) -> Vec<(String, String)> {
    options
        .into_iter()
        .filter_map(|o| o.header)
        .map(|h| (h.key.to_ascii_lowercase(), h.value))
        .collect()
}

/// Decodes a Check reply. A reply that is neither a well-formed OK (status 0) nor a
/// well-formed denial is an error, which the filter turns into a fail-closed 503.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, &'static str> {
    use crate::decision_cache::CachedOutcome;
    let response = CheckResponse::decode(bytes).map_err(|_| "reply is not a CheckResponse")?;
    let code = response.status.as_ref().map(|s| s.code).unwrap_or(-1);
    let directive = CacheDirective::from_metadata(response.dynamic_metadata.as_ref());
    let outcome = match (code, response.ok_response, response.denied_response) {
        (0, ok, None) => {
            let ok = ok.unwrap_or_default();
            CachedOutcome::Allow {
                headers: header_pairs(ok.headers),
                remove: ok.headers_to_remove,
            }
        }
        (c, None, Some(denied)) if c != 0 => {
            let status = denied.status.map(|s| s.code).unwrap_or(403);
            let status = u16::try_from(status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .unwrap_or(403);
            CachedOutcome::Deny {
                status,
                headers: header_pairs(denied.headers),
                body: denied.body,
            }
        }
        (c, None, None) if c != 0 => CachedOutcome::Deny {
            status: 403,
            headers: Vec::new(),
            body: String::new(),
        },
        _ => return Err("reply mixes allow and deny"),
    };
    Ok(Reply { outcome, directive })
}

#[cfg(test)]
mod reply_tests {
    use super::*;
    use crate::decision_cache::CachedOutcome;

    #[test]
    fn replies_decode_into_outcomes() {
        let ok = CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                message: String::new(),
            }),
            ok_response: Some(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "X-Auth-Subject".into(),
                        value: "a".into(),
                    }),
                    append_action: 2,
                }],
                headers_to_remove: vec!["authorization".into()],
            }),
            denied_response: None,
            dynamic_metadata: Some(
                CacheDirective {
                    ttl_ms: 5,
                    ..CacheDirective::default()
                }
                .to_metadata(),
            ),
        };
        let reply = decode_reply(&ok.encode_to_vec()).unwrap();
        assert_eq!(
            reply.outcome,
            CachedOutcome::Allow {
                headers: vec![("x-auth-subject".into(), "a".into())],
                remove: vec!["authorization".into()]
            }
        );
        assert_eq!(reply.directive.ttl_ms, 5);
        assert!(decode_reply(b"\xff\xff").is_err());
        let mixed = CheckResponse {
            denied_response: Some(DeniedHttpResponse::default()),
            ..ok
        };
        assert!(
            decode_reply(&mixed.encode_to_vec()).is_err(),
            "allow and deny at once fails closed"
        );
    }

    #[test]
    fn requests_carry_the_tier() {
        let bytes = encode_check_request(CheckFacts {
            method: "GET".into(),
            path: "/a".into(),
            tier: "privileged".into(),
            ..CheckFacts::default()
        });
        let decoded = CheckRequest::decode(bytes.as_slice()).unwrap();
        let extensions = decoded.attributes.unwrap().context_extensions;
        assert_eq!(extensions["tier"], "privileged");
        assert!(!extensions.contains_key(CLIENT_LOCALITY_EXTENSION));
        assert!(!extensions.contains_key(BACKGROUND_EXTENSION));
        for mark in [Background::AfterAnswer, Background::BeforeAnswer] {
            let background = encode_check_request(CheckFacts {
                background: mark,
                ..CheckFacts::default()
            });
            let decoded = CheckRequest::decode(background.as_slice()).unwrap();
            let value =
                decoded.attributes.unwrap().context_extensions[BACKGROUND_EXTENSION].clone();
            assert_eq!(Background::parse(Some(&value)), mark);
        }
        assert_eq!(Background::parse(Some("yes")), Background::No);
        let located = encode_check_request(CheckFacts {
            tier: "privileged".into(),
            client_locality: Some("eu-west-1/zone-a".into()),
            ..CheckFacts::default()
        });
        let decoded = CheckRequest::decode(located.as_slice()).unwrap();
        assert_eq!(
            decoded.attributes.unwrap().context_extensions[CLIENT_LOCALITY_EXTENSION],
            "eu-west-1/zone-a"
        );
    }
}
