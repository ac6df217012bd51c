//! The context's wire format and every refusal of the verifier, against the signer.

use super::*;
use crate::sign::ContextSigner;

fn claims(now: u64) -> Claims {
    Claims {
        iss: "authz".into(),
        aud: "orders".into(),
        sub: "alice".into(),
        sub_kind: "sub".into(),
        idp: "https://idp.example".into(),
        scope: "read write".into(),
        tier: "authenticated".into(),
        tenant: Some("acme".into()),
        pv: 3,
        iat: now,
        exp: now + 30,
        req: Binding {
            m: "GET".into(),
            r: "items".into(),
        },
        ext: Map::new(),
    }
}

fn signer(kid: &str, byte: u8) -> ContextSigner {
    ContextSigner::new(kid, &[byte; 32])
}

fn keys(signers: &[&ContextSigner]) -> KeySet {
    KeySet::from_keys(
        signers
            .iter()
            .map(|s| (s.kid().to_owned(), s.verifying_key())),
    )
}

const NOW: u64 = 1_800_000_000;

#[test]
fn a_signed_context_verifies_with_its_claims_and_binding() {
    let s = signer("k1", 7);
    let context = s.sign(&claims(NOW));
    let verified = Verifier::new("authz", "orders")
        .verify(
            &context,
            &keys(&[&s]),
            &Expected::new("GET", "items"),
            NOW + 1,
        )
        .unwrap();
    assert_eq!(verified, claims(NOW));
    assert!(verified.has_scope("write") && !verified.has_scope("wr"));
}

#[test]
fn forged_tampered_or_unsigned_contexts_are_refused() {
    let s = signer("k1", 7);
    let v = Verifier::new("authz", "orders");
    let ks = keys(&[&s]);
    let context = s.sign(&claims(NOW));
    // Signed by another key under the same kid.
    let forged = signer("k1", 8).sign(&claims(NOW));
    assert_eq!(
        v.verify(&forged, &ks, &Expected::new("GET", "items"), NOW),
        Err(Refusal::BadSignature)
    );
    // Claims swapped under a valid signature.
    let mut other = claims(NOW);
    other.sub = "mallory".into();
    let other = s.sign(&other);
    let parts: Vec<&str> = context.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    assert_eq!(
        v.verify(&swapped, &ks, &Expected::new("GET", "items"), NOW),
        Err(Refusal::BadSignature)
    );
    // alg none, another typ, an unknown kid, a crit header.
    let header = |h: &str| format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(h), parts[1], parts[2]);
    for (h, why) in [
        (
            r#"{"alg":"none","typ":"authz-context+jwt","kid":"k1"}"#,
            Refusal::WrongHeader,
        ),
        (
            r#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#,
            Refusal::WrongHeader,
        ),
        (
            r#"{"alg":"EdDSA","typ":"authz-context+jwt","kid":"k9"}"#,
            Refusal::UnknownKey,
        ),
        (
            r#"{"alg":"EdDSA","typ":"authz-context+jwt","kid":"k1","crit":["x"]}"#,
            Refusal::WrongHeader,
        ),
    ] {
        assert_eq!(
            v.verify(&header(h), &ks, &Expected::new("GET", "items"), NOW),
            Err(why),
            "{h}"
        );
    }
    for junk in [
        "",
        "a.b",
        "a.b.c.d",
        "!!.!!.!!",
        &"a".repeat(MAX_CONTEXT_BYTES + 1),
    ] {
        assert!(
            v.verify(junk, &ks, &Expected::new("GET", "items"), NOW)
                .is_err(),
            "{junk:.20}"
        );
    }
    assert_eq!(
        v.verify("", &ks, &Expected::new("GET", "items"), NOW),
        Err(Refusal::Missing)
    );
}

#[test]
fn a_context_replayed_on_another_route_or_method_is_refused() {
    let s = signer("k1", 7);
    let v = Verifier::new("authz", "orders");
    let context = s.sign(&claims(NOW));
    let ks = keys(&[&s]);
    assert_eq!(
        v.verify(&context, &ks, &Expected::new("DELETE", "items"), NOW),
        Err(Refusal::WrongRequest)
    );
    assert_eq!(
        v.verify(&context, &ks, &Expected::new("GET", "admin"), NOW),
        Err(Refusal::WrongRequest)
    );
    assert!(
        v.verify(&context, &ks, &Expected::new("get", "items"), NOW)
            .is_ok(),
        "methods are compared without case, as the route table does"
    );
    let tenant = |t| Expected {
        method: "GET",
        route: "items",
        tenant: Some(t),
    };
    assert!(v.verify(&context, &ks, &tenant("acme"), NOW).is_ok());
    assert_eq!(
        v.verify(&context, &ks, &tenant("beta"), NOW),
        Err(Refusal::WrongRequest),
        "made for another tenant"
    );
    assert_eq!(
        Verifier::new("authz", "billing").verify(
            &context,
            &ks,
            &Expected::new("GET", "items"),
            NOW
        ),
        Err(Refusal::WrongAudience)
    );
    assert_eq!(
        Verifier::new("other", "orders").verify(&context, &ks, &Expected::new("GET", "items"), NOW),
        Err(Refusal::WrongIssuer)
    );
}

#[test]
fn lifetimes_are_checked_with_leeway() {
    let s = signer("k1", 7);
    let v = Verifier::new("authz", "orders");
    let ks = keys(&[&s]);
    let context = s.sign(&claims(NOW));
    assert!(v
        .verify(&context, &ks, &Expected::new("GET", "items"), NOW + 34)
        .is_ok());
    assert_eq!(
        v.verify(&context, &ks, &Expected::new("GET", "items"), NOW + 35),
        Err(Refusal::Expired)
    );
    assert_eq!(
        v.verify(&context, &ks, &Expected::new("GET", "items"), NOW - 6),
        Err(Refusal::NotYetValid)
    );
    let mut long = claims(NOW);
    long.exp = NOW + 301;
    assert_eq!(
        v.verify(&s.sign(&long), &ks, &Expected::new("GET", "items"), NOW),
        Err(Refusal::TooLong)
    );
}

#[test]
fn after_a_rotation_both_keys_verify_until_the_old_one_is_unpublished() {
    let (old, new) = (signer("k1", 7), signer("k2", 9));
    let v = Verifier::new("authz", "orders");
    let before = old.sign(&claims(NOW));
    let after = new.sign(&claims(NOW));
    let both = keys(&[&old, &new]);
    assert!(v
        .verify(&before, &both, &Expected::new("GET", "items"), NOW)
        .is_ok());
    assert!(v
        .verify(&after, &both, &Expected::new("GET", "items"), NOW)
        .is_ok());
    assert_eq!(
        v.verify(&before, &keys(&[&new]), &Expected::new("GET", "items"), NOW),
        Err(Refusal::UnknownKey)
    );
}

#[test]
fn a_jwks_round_trips_and_bad_documents_are_errors() {
    let s = signer("k1", 7);
    let document = serde_json::json!({"keys": [
        jwk(s.kid(), &s.verifying_key()),
        {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
    ]});
    let ks = KeySet::from_jwks(document.to_string().as_bytes()).unwrap();
    assert_eq!(ks.len(), 1);
    let context = s.sign(&claims(NOW));
    assert!(Verifier::new("authz", "orders")
        .verify(&context, &ks, &Expected::new("GET", "items"), NOW)
        .is_ok());
    assert!(KeySet::from_jwks(b"[]").is_err());
    assert!(
        KeySet::from_jwks(br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"AAAA"}]}"#)
            .is_err()
    );
    assert!(KeySet::from_jwks(br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#).is_err());
}

#[test]
fn a_signer_round_trips_through_its_base64_secret() {
    let s = signer("k1", 7);
    let again = ContextSigner::from_base64("k1", &s.secret_base64()).unwrap();
    assert_eq!(again.verifying_key(), s.verifying_key());
    assert!(ContextSigner::from_base64("k1", "AAAA").is_err());
    assert!(ContextSigner::from_base64("k1", "!!").is_err());
}
