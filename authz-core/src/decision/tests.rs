//! Decision tests: the route → token → requirements → tier pipeline and the deny responses.

use super::*;
use crate::config::Policy;
use dev_keys::{KeyAlgorithm, SigningKey};
use serde_json::{json, Value};
use std::sync::OnceLock;

const NOW: i64 = 1_800_000_000;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(KeyAlgorithm::Es256, "k1").unwrap())
}

fn policy() -> Policy {
    let mut config = crate::config::tests::example();
    config["providers"][0]["jwks"] = json!({"inline": dev_keys::jwks(&[key()])});
    Policy::from_json(config.to_string().as_bytes()).unwrap()
}

fn token(extra: Value) -> String {
    let mut claims = json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "exp": NOW + 300, "scope": "read write"});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    key().sign(&claims).unwrap()
}

fn run(method: &str, path: &str, authorization: Option<&str>) -> Decision {
    let p = policy();
    decide(
        &p,
        &RequestFacts {
            method,
            path,
            authorization,
        },
        |i| p.inline_keys(i),
        NOW,
    )
}

fn reason(d: Decision) -> DenyReason {
    match d {
        Decision::Deny { reason, .. } => reason,
        other => panic!("expected deny, got {other:?}"),
    }
}

#[test]
fn public_routes_need_no_token() {
    assert!(matches!(
        run("GET", "/healthz", None),
        Decision::Allow {
            tier: Tier::Public,
            ..
        }
    ));
}

#[test]
fn allow_carries_the_verified_context() {
    let bearer = format!("Bearer {}", token(json!({"tenant": "acme"})));
    let Decision::Allow {
        upstream_headers,
        tier,
        route,
        ..
    } = run("GET", "/api/items", Some(&bearer))
    else {
        panic!("expected allow");
    };
    assert_eq!((tier, route.as_str()), (Tier::Authenticated, "read"));
    let get = |name: &str| {
        upstream_headers
            .iter()
            .find(|(h, _)| h == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("x-auth-subject"), Some("alice"));
    assert_eq!(get("x-auth-subject-kind"), Some("sub"));
    assert_eq!(get("x-auth-scopes"), Some("read write"));
    assert_eq!(get("x-auth-tier"), Some("authenticated"));
    assert_eq!(get("x-auth-issuer"), Some("https://idp.test"));
    assert_eq!(get("x-auth-tenant"), Some("acme"));
}

#[test]
fn a_token_without_sub_is_its_clients() {
    let mut claims = json!({"iss": "https://idp.test", "aud": "api", "client_id": "batch-job",
                            "exp": NOW + 300, "scope": "read write"});
    let headers = |claims: &Value| {
        let bearer = format!("Bearer {}", key().sign(claims).unwrap());
        match run("GET", "/api/items", Some(&bearer)) {
            Decision::Allow {
                upstream_headers,
                subject,
                ..
            } => (upstream_headers, subject),
            other => panic!("expected allow, got {other:?}"),
        }
    };
    let (upstream, subject) = headers(&claims);
    let get = |name: &str| {
        upstream
            .iter()
            .find(|(h, _)| h == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("x-auth-subject").as_deref(), Some("batch-job"));
    assert_eq!(get("x-auth-subject-kind").as_deref(), Some("client_id"));
    assert_eq!(get("x-auth-scopes").as_deref(), Some("read write"));
    // Revocations and cached decisions key a client apart from a user of the same name.
    assert_eq!(
        subject,
        Some(crate::principal::client_key("batch-job")),
        "the client's key"
    );
    // `azp` where an IdP names the client that way.
    claims.as_object_mut().unwrap().remove("client_id");
    claims["azp"] = json!("web-app");
    assert_eq!(
        headers(&claims).1,
        Some(crate::principal::client_key("web-app"))
    );
}

#[test]
fn bearer_scheme_is_required() {
    assert_eq!(reason(run("GET", "/api/x", None)), DenyReason::MissingToken);
    assert_eq!(
        reason(run("GET", "/api/x", Some("Basic abc"))),
        DenyReason::NotBearer
    );
    assert_eq!(
        reason(run("GET", "/api/x", Some("Bearer"))),
        DenyReason::NotBearer
    );
    let lower = format!("bearer {}", token(json!({})));
    assert!(matches!(
        run("GET", "/api/x", Some(&lower)),
        Decision::Allow { .. }
    ));
}

#[test]
fn valid_token_without_the_scope_is_forbidden() {
    let bearer = format!("Bearer {}", token(json!({"scope": "write"})));
    let r = reason(run("GET", "/api/items", Some(&bearer)));
    assert_eq!(
        (r.clone(), r.status()),
        (DenyReason::InsufficientScope, 403)
    );
}

#[test]
fn privileged_routes_fail_closed_without_the_server() {
    let bearer = format!("Bearer {}", token(json!({})));
    let r = reason(run("POST", "/admin/users", Some(&bearer)));
    assert_eq!((r.clone(), r.status()), (DenyReason::ServerRequired, 503));
    // And a bad token there is still a plain 401.
    assert_eq!(reason(run("POST", "/admin/users", None)).status(), 401);
}

#[test]
fn unknown_kid_asks_for_keys() {
    let t = key()
        .sign_with(
            jsonwebtoken::Algorithm::ES256,
            &json!({"kid": "new"}),
            &json!({"iss": "https://idp.test", "aud": "api", "exp": NOW + 60}),
        )
        .unwrap();
    let bearer = format!("Bearer {t}");
    assert!(
        matches!(run("GET", "/api/x", Some(&bearer)), Decision::AwaitKeys { provider: 0, failure: crate::VerifyFailure::UnknownKey { kid, .. }, .. } if kid == "new")
    );
}

#[test]
fn a_signature_the_key_behind_its_kid_rejects_asks_for_keys() {
    // The issuer rotated the key behind a reused kid: fresh keys may verify it.
    let t = key()
        .sign(&json!({"iss": "https://idp.test", "aud": "api", "exp": NOW + 60}))
        .unwrap();
    let forged = dev_keys::with_flipped_signature(&t);
    let bearer = format!("Bearer {forged}");
    assert!(matches!(
        run("GET", "/api/x", Some(&bearer)),
        Decision::AwaitKeys {
            provider: 0,
            failure: crate::VerifyFailure::BadSignature { provider: 0 },
            ..
        }
    ));
}

#[test]
fn every_401_is_byte_identical() {
    let reasons = [
        DenyReason::MissingToken,
        DenyReason::NotBearer,
        DenyReason::Token(crate::VerifyFailure::Expired),
        DenyReason::Token(crate::VerifyFailure::BadSignature { provider: 0 }),
        DenyReason::Token(crate::VerifyFailure::WrongAudience),
        DenyReason::Token(crate::VerifyFailure::UnknownKey {
            provider: 0,
            kid: "x".into(),
        }),
        DenyReason::Token(crate::VerifyFailure::AlgNone),
    ];
    let first = deny_response(&reasons[0], "demo");
    assert_eq!(first.status, 401);
    assert_eq!(
        first.headers[0].1,
        "Bearer realm=\"demo\", error=\"invalid_token\""
    );
    for r in &reasons {
        assert_eq!(deny_response(r, "demo"), first, "{r:?}");
    }
    let unavailable = deny_response(&DenyReason::KeysUnavailable, "demo");
    assert_eq!(unavailable.status, 503);
    assert!(unavailable.headers.contains(&("retry-after", "5".into())));
}

#[test]
fn header_values_with_control_characters_are_dropped() {
    let bearer = format!("Bearer {}", token(json!({"tenant": "a\r\nx-evil: 1"})));
    let Decision::Allow {
        upstream_headers, ..
    } = run("GET", "/api/items", Some(&bearer))
    else {
        panic!()
    };
    assert!(upstream_headers.iter().all(|(h, _)| h != "x-auth-tenant"));
}

#[test]
fn a_bearer_credential_is_b64token_bytes_only() {
    for byte in 0u8..=255 {
        let expected = byte.is_ascii_alphanumeric() || b"-._~+/".contains(&byte);
        let credential = format!("Bearer a{}b", char::from(byte));
        let accepted = bearer_token(&credential).is_some();
        // A space splits the credential (trimmed) and is accepted only at its edges.
        if byte != b' ' {
            assert_eq!(accepted, expected, "byte {byte:#04x}");
        }
    }
    assert_eq!(bearer_token("Bearer abc=="), Some("abc=="));
    assert_eq!(bearer_token("bearer  abc "), Some("abc"));
    assert_eq!(bearer_token("Bearer ==="), None);
    assert_eq!(bearer_token("Basic abc"), None);
}
