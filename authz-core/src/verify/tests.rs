//! Verifier tests: one per rule, each built from real keys and real signatures.

use super::*;
use crate::keys::KeySet;
use dev_keys::{KeyAlgorithm, SigningKey};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::OnceLock;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://idp.test";
const AUD: &str = "api";

struct Fixture {
    rsa: SigningKey,
    es256: SigningKey,
    es384: SigningKey,
    ed: SigningKey,
    keys: KeySet,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rsa = SigningKey::generate(KeyAlgorithm::Rsa, "rsa-1").unwrap();
        let es256 = SigningKey::generate(KeyAlgorithm::Es256, "ec-1").unwrap();
        let es384 = SigningKey::generate(KeyAlgorithm::Es384, "ec384-1").unwrap();
        let ed = SigningKey::generate(KeyAlgorithm::Ed25519, "ed-1").unwrap();
        // The RSA key is published without `alg` so the same key can verify RS* and PS*.
        let doc = json!({"keys": [rsa.public_jwk_without_alg(), es256.public_jwk(), es384.public_jwk(), ed.public_jwk()]});
        let keys = KeySet::from_jwks_value(&doc).unwrap();
        Fixture { rsa, es256, es384, ed, keys }
    })
}

fn provider() -> Provider {
    Provider {
        name: "test".into(),
        issuer: ISS.into(),
        audiences: vec![AUD.into(), "other-api".into()],
        clock_skew_seconds: 60,
        require_expiration: true,
        required_typ: None,
        refuse_id_tokens: false,
        max_lifetime_seconds: None,
        client_grant: None,
        hmac_key: None,
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": AUD, "exp": NOW + 600, "iat": NOW - 10, "scope": "read"})
}

fn check_with(token: &str, provider: Provider) -> Result<VerifiedToken, VerifyFailure> {
    verify(token, &[provider], |_| Some(&fixture().keys), 8192, NOW)
}

fn check(token: &str) -> Result<VerifiedToken, VerifyFailure> {
    check_with(token, provider())
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

#[test]
fn accepts_every_supported_asymmetric_algorithm() {
    let f = fixture();
    for (key, alg) in [
        (&f.rsa, Algorithm::RS256),
        (&f.rsa, Algorithm::RS384),
        (&f.rsa, Algorithm::RS512),
        (&f.rsa, Algorithm::PS256),
        (&f.rsa, Algorithm::PS384),
        (&f.rsa, Algorithm::PS512),
        (&f.es256, Algorithm::ES256),
        (&f.es384, Algorithm::ES384),
        (&f.ed, Algorithm::EdDSA),
    ] {
        let token = key
            .sign_with(alg, &json!({"kid": key.kid}), &claims())
            .unwrap();
        let verified = check(&token).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(verified.algorithm, alg);
        assert_eq!(verified.claims.subject.as_deref(), Some("alice"));
    }
}

#[test]
fn a_token_without_kid_is_tried_against_compatible_keys() {
    let f = fixture();
    let token = f
        .es256
        .sign_with(Algorithm::ES256, &json!({}), &claims())
        .unwrap();
    assert!(check(&token).is_ok());
}

#[test]
fn alg_none_is_always_rejected() {
    assert_eq!(
        check(&dev_keys::unsigned_token(&claims())).unwrap_err(),
        VerifyFailure::AlgNone
    );
}

#[test]
fn hmac_signed_with_the_rsa_public_key_is_rejected() {
    let token = fixture().rsa.forge_hmac_with_public_key(&claims()).unwrap();
    assert_eq!(
        check(&token).unwrap_err(),
        VerifyFailure::AlgorithmKeyMismatch { provider: 0 }
    );
}

#[test]
fn hmac_is_accepted_only_with_a_configured_secret() {
    let secret = [42u8; 32];
    let token = dev_keys::sign_hmac(&secret, &json!({}), &claims()).unwrap();
    assert_eq!(
        check(&token).unwrap_err(),
        VerifyFailure::AlgorithmKeyMismatch { provider: 0 }
    );
    let mut p = provider();
    p.hmac_key = Some(crate::keys::VerificationKey::hmac(&secret).unwrap());
    assert!(check_with(&token, p.clone()).is_ok());
    let forged = dev_keys::sign_hmac(&[43u8; 32], &json!({}), &claims()).unwrap();
    assert_eq!(
        check_with(&forged, p).unwrap_err(),
        VerifyFailure::BadSignature { provider: 0 }
    );
}

#[test]
fn alg_must_match_the_key_type() {
    let f = fixture();
    // An EC token that names the RSA key's kid.
    let token = f
        .es256
        .sign_with(Algorithm::ES256, &json!({"kid": "rsa-1"}), &claims())
        .unwrap();
    assert_eq!(
        check(&token).unwrap_err(),
        VerifyFailure::AlgorithmKeyMismatch { provider: 0 }
    );
}

#[test]
fn pinned_jwk_alg_is_enforced() {
    let f = fixture();
    let pinned = KeySet::from_jwks_value(&json!({"keys": [f.rsa.public_jwk()]})).unwrap();
    let token = f
        .rsa
        .sign_with(Algorithm::PS256, &json!({"kid": "rsa-1"}), &claims())
        .unwrap();
    let result = verify(&token, &[provider()], |_| Some(&pinned), 8192, NOW);
    assert_eq!(
        result.unwrap_err(),
        VerifyFailure::AlgorithmKeyMismatch { provider: 0 }
    );
}

#[test]
fn tampering_is_detected() {
    let f = fixture();
    let token = f.rsa.sign(&claims()).unwrap();
    let payload = dev_keys::with_swapped_payload(&token, &with(claims(), "sub", json!("mallory")));
    assert_eq!(
        check(&payload).unwrap_err(),
        VerifyFailure::BadSignature { provider: 0 }
    );
    let signature = dev_keys::with_flipped_signature(&token);
    assert_eq!(
        check(&signature).unwrap_err(),
        VerifyFailure::BadSignature { provider: 0 }
    );
}

#[test]
fn time_claims_respect_the_skew() {
    let key = &fixture().es256;
    let sign = |c: Value| key.sign(&c).unwrap();
    assert_eq!(
        check(&sign(with(claims(), "exp", json!(NOW - 61)))).unwrap_err(),
        VerifyFailure::Expired
    );
    assert!(
        check(&sign(with(claims(), "exp", json!(NOW - 59)))).is_ok(),
        "inside the skew"
    );
    assert_eq!(
        check(&sign(with(claims(), "nbf", json!(NOW + 61)))).unwrap_err(),
        VerifyFailure::NotYetValid
    );
    assert!(check(&sign(with(claims(), "nbf", json!(NOW + 59)))).is_ok());
    assert_eq!(
        check(&sign(with(claims(), "iat", json!(NOW + 3600)))).unwrap_err(),
        VerifyFailure::IssuedInFuture
    );
    assert_eq!(
        check(&sign(without(claims(), "exp"))).unwrap_err(),
        VerifyFailure::MissingExpiration
    );
    let mut lenient = provider();
    lenient.require_expiration = false;
    assert!(check_with(&sign(without(claims(), "exp")), lenient).is_ok());
}

#[test]
fn issuer_and_audience_must_be_configured_ones() {
    let key = &fixture().es256;
    let sign = |c: Value| key.sign(&c).unwrap();
    assert_eq!(
        check(&sign(with(claims(), "iss", json!("https://evil")))).unwrap_err(),
        VerifyFailure::UnknownIssuer
    );
    assert_eq!(
        check(&sign(without(claims(), "iss"))).unwrap_err(),
        VerifyFailure::UnknownIssuer
    );
    assert_eq!(
        check(&sign(with(claims(), "aud", json!("elsewhere")))).unwrap_err(),
        VerifyFailure::WrongAudience
    );
    assert_eq!(
        check(&sign(without(claims(), "aud"))).unwrap_err(),
        VerifyFailure::WrongAudience
    );
    assert!(check(&sign(with(claims(), "aud", json!(["x", "other-api"])))).is_ok());
}

#[test]
fn id_tokens_are_refused_by_their_markers_when_asked() {
    let key = &fixture().es256;
    let sign = |c: Value| key.sign(&c).unwrap();
    let mut strict = provider();
    strict.refuse_id_tokens = true;
    assert!(check_with(&sign(claims()), strict.clone()).is_ok());
    for marker in ID_TOKEN_MARKERS {
        let id_token = sign(with(claims(), marker, json!("x")));
        assert_eq!(
            check_with(&id_token, strict.clone()).unwrap_err(),
            VerifyFailure::WrongType,
            "{marker}"
        );
        assert!(check(&id_token).is_ok(), "off by default: {marker}");
    }
}

#[test]
fn a_client_grant_marker_makes_a_verified_token_with_a_sub_the_clients() {
    let key = &fixture().es256;
    let token = key
        .sign(&with(
            with(claims(), "gty", json!("client-credentials")),
            "azp",
            json!("app"),
        ))
        .unwrap();
    let user = check(&token).unwrap();
    assert_eq!(
        user.claims.principal().map(|p| p.key()),
        Some("alice".into())
    );
    let mut marked = provider();
    marked.client_grant = Some(crate::principal::ClientGrant {
        claim: "gty".into(),
        values: vec!["client-credentials".into()],
    });
    let client = check_with(&token, marked).unwrap();
    assert_eq!(
        client.claims.principal().map(|p| p.key()),
        Some(crate::principal::client_key("app"))
    );
    assert_eq!(client.claims.subject, None, "no user is named");
}

#[test]
fn a_maximum_lifetime_refuses_longer_lived_tokens_and_tokens_without_exp() {
    let key = &fixture().es256;
    let sign = |c: Value| key.sign(&c).unwrap();
    let mut bounded = provider();
    bounded.max_lifetime_seconds = Some(3_600);
    bounded.require_expiration = false;
    let exactly = with(claims(), "exp", json!(NOW - 10 + 3_600));
    assert!(check_with(&sign(exactly.clone()), bounded.clone()).is_ok());
    let longer = with(claims(), "exp", json!(NOW - 10 + 3_601));
    assert_eq!(
        check_with(&sign(longer.clone()), bounded.clone()).unwrap_err(),
        VerifyFailure::LifetimeTooLong
    );
    assert!(check(&sign(longer)).is_ok(), "no limit by default");
    // Without `iat` the lifetime is not known: refused, however soon `exp` is.
    let no_iat = without(with(claims(), "exp", json!(NOW + 60)), "iat");
    assert_eq!(
        check_with(&sign(no_iat), bounded.clone()).unwrap_err(),
        VerifyFailure::LifetimeTooLong
    );
    assert_eq!(
        check_with(&sign(without(claims(), "exp")), bounded).unwrap_err(),
        VerifyFailure::MissingExpiration
    );
}

#[test]
fn one_trailing_slash_either_way_names_the_same_issuer_and_nothing_else_does() {
    let key = &fixture().es256;
    let sign = |c: Value| key.sign(&c).unwrap();
    let slashed = format!("{ISS}/");
    assert!(check(&sign(with(claims(), "iss", json!(slashed)))).is_ok());
    let mut configured_slashed = provider();
    configured_slashed.issuer = slashed.clone();
    assert!(check_with(&sign(claims()), configured_slashed.clone()).is_ok());
    assert!(check_with(
        &sign(with(claims(), "iss", json!(slashed))),
        configured_slashed
    )
    .is_ok());
    for other in [
        format!("{ISS}//"),
        format!("{ISS}/x"),
        format!("{ISS}x"),
        ISS.to_uppercase(),
    ] {
        assert_eq!(
            check(&sign(with(claims(), "iss", json!(other)))).unwrap_err(),
            VerifyFailure::UnknownIssuer,
            "{other}"
        );
    }
}

#[test]
fn typ_is_checked_when_required() {
    let key = &fixture().es256;
    let mut p = provider();
    p.required_typ = Some("at+jwt".into());
    let plain = key.sign(&claims()).unwrap();
    assert_eq!(
        check_with(&plain, p.clone()).unwrap_err(),
        VerifyFailure::WrongType
    );
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        let token = key
            .sign_with(
                Algorithm::ES256,
                &json!({"kid": "ec-1", "typ": typ}),
                &claims(),
            )
            .unwrap();
        assert!(check_with(&token, p.clone()).is_ok(), "{typ}");
    }
}

#[test]
fn unknown_kid_and_missing_keys_are_reported_for_refetch() {
    let key = &fixture().es256;
    let token = key
        .sign_with(Algorithm::ES256, &json!({"kid": "rotated"}), &claims())
        .unwrap();
    assert_eq!(
        check(&token).unwrap_err(),
        VerifyFailure::UnknownKey {
            provider: 0,
            kid: "rotated".into()
        }
    );
    let none = verify(
        &key.sign(&claims()).unwrap(),
        &[provider()],
        |_| None,
        8192,
        NOW,
    );
    assert_eq!(
        none.unwrap_err(),
        VerifyFailure::KeysUnavailable { provider: 0 }
    );
}

#[test]
fn critical_headers_and_oversized_tokens_are_rejected() {
    let key = &fixture().es256;
    let crit = key
        .sign_with(
            Algorithm::ES256,
            &json!({"kid": "ec-1", "crit": ["exp"]}),
            &claims(),
        )
        .unwrap();
    assert_eq!(check(&crit).unwrap_err(), VerifyFailure::CriticalHeader);
    let big = key
        .sign(&with(claims(), "pad", json!("x".repeat(10_000))))
        .unwrap();
    assert_eq!(check(&big).unwrap_err(), VerifyFailure::TooLarge);
}

#[test]
fn several_providers_each_use_their_own_keys() {
    let f = fixture();
    let mut second = provider();
    second.issuer = "https://second".into();
    let second_keys = KeySet::from_jwks_value(&json!({"keys": [f.ed.public_jwk()]})).unwrap();
    let providers = [provider(), second];
    let keys = |i: usize| Some(if i == 0 { &f.keys } else { &second_keys });
    let token =
        f.ed.sign(&with(claims(), "iss", json!("https://second")))
            .unwrap();
    assert_eq!(
        verify(&token, &providers, keys, 8192, NOW)
            .unwrap()
            .provider,
        1
    );
    // A key of provider 0 cannot sign for provider 1.
    let cross = f
        .es256
        .sign(&with(claims(), "iss", json!("https://second")))
        .unwrap();
    assert!(verify(&cross, &providers, keys, 8192, NOW).is_err());
}

#[test]
fn malformed_shapes_are_rejected() {
    for token in [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "..",
        "a..c",
        "@@@.b.c",
        "e30.e30=.",
        "e30.e30.e30",
    ] {
        let err = check(token).unwrap_err();
        assert!(
            matches!(err, VerifyFailure::Malformed(_)),
            "{token}: {err:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary strings never verify and never panic.
    #[test]
    fn garbage_never_verifies(token in ".{0,300}") {
        prop_assert!(check(&token).is_err());
    }

    /// Garbage shaped like a JWT (three base64url segments) never verifies.
    #[test]
    fn jwt_shaped_garbage_never_verifies(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,80}", c in "[A-Za-z0-9_-]{0,120}") {
        let token = format!("{a}.{b}.{c}");
        prop_assert!(check(&token).is_err());
    }

    /// Changing any single character of a valid token makes it fail.
    #[test]
    fn any_single_character_change_is_rejected(position in 0usize..1000, replacement in "[A-Za-z0-9_.-]") {
        let token = fixture().es256.sign(&claims()).unwrap();
        let position = position % token.len();
        let mut bytes = token.clone().into_bytes();
        let new = replacement.as_bytes()[0];
        prop_assume!(bytes[position] != new);
        bytes[position] = new;
        let mutated = String::from_utf8(bytes).unwrap();
        // The last character of a segment may carry unused bits that strict decoding rejects;
        // every outcome must be a rejection all the same.
        prop_assert!(check(&mutated).is_err(), "accepted a mutated token at {}", position);
    }

    /// Validity over time: a token verifies exactly inside [nbf - skew, exp + skew).
    #[test]
    fn validity_window_is_exact(offset in -2000i64..2000) {
        let key = &fixture().es256;
        let c = json!({"iss": ISS, "aud": AUD, "nbf": NOW, "exp": NOW + 600});
        let token = key.sign(&c).unwrap();
        let at = NOW + offset;
        let result = verify(&token, &[provider()], |_| Some(&fixture().keys), 8192, at);
        let expected = at + 60 >= NOW && at < NOW + 600 + 60;
        prop_assert_eq!(result.is_ok(), expected, "offset {}", offset);
    }
}

#[test]
fn a_signature_in_a_non_canonical_encoding_is_refused() {
    // 64 signature bytes take 86 base64url characters: the last one carries 2 bits and 4
    // unused ones. Setting an unused bit spells the same bytes another way: refused, so one
    // signed content has one spelling per signature (revocations of its bytes hold).
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let token = fixture().es256.sign(&claims()).unwrap();
    assert!(check(&token).is_ok());
    let (input, signature) = token.rsplit_once('.').unwrap();
    assert_eq!(signature.len(), 86);
    let last = signature.as_bytes()[85];
    let index = ALPHABET.iter().position(|c| *c == last).unwrap();
    let twin = ALPHABET[(index & !0x0f) | ((index + 1) & 0x0f)] as char;
    let other = format!("{input}.{}{twin}", &signature[..85]);
    assert_ne!(other, token);
    assert!(
        matches!(check(&other), Err(VerifyFailure::Malformed(_))),
        "{:?}",
        check(&other)
    );
}
