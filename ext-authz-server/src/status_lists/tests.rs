//! The list format and the token checks of a Status List Token (signature aside: see
//! `authz_core::verify::verify_signed_by`).

use super::*;
use flate2::write::ZlibEncoder;
use std::io::Write as _;

const URI: &str = "https://idp.unit/statuslists/1";
const ISSUER: &str = "https://idp.unit";
const NOW: i64 = 1_700_000_000;

fn lst(bytes: &[u8]) -> String {
    let mut encoder = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    URL_SAFE_NO_PAD.encode(encoder.finish().unwrap())
}

fn header() -> Value {
    serde_json::json!({"alg": "RS256", "typ": "statuslist+jwt"})
}

fn payload(bits: u64, bytes: &[u8]) -> Value {
    serde_json::json!({"iss": ISSUER, "sub": URI, "iat": NOW - 5, "exp": NOW + 600, "ttl": 30,
                       "status_list": {"bits": bits, "lst": lst(bytes)}})
}

const BOUNDS: ListBounds = ListBounds {
    max_decoded_bytes: 1 << 20,
    max_set_entries: 100,
};

fn read(header: &Value, payload: &Value) -> Result<VerifiedList, ListError> {
    read_list_token(
        header,
        payload.to_string().as_bytes(),
        ISSUER,
        URI,
        NOW,
        60,
        BOUNDS,
    )
}

#[test]
fn entries_are_packed_from_the_least_significant_bit() {
    // The draft's example: bits 1, entries 0, 3, 4, 5, 7, 8, 9, 13, 15 set.
    let one = read(&header(), &payload(1, &[0xb9, 0xa3])).unwrap().list;
    assert_eq!(one.len(), 16);
    let set: Vec<u64> = one.set_entries().collect();
    assert_eq!(set, vec![0, 3, 4, 5, 7, 8, 9, 13, 15]);
    assert_eq!(one.status(1), Some(0));
    assert_eq!(one.status(16), None);
    // bits 2: 0xc9 = 11 00 10 01 → entries 0..3 are 1, 2, 0, 3.
    let two = read(&header(), &payload(2, &[0xc9])).unwrap().list;
    assert_eq!(
        (0..4).map(|i| two.status(i)).collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(0), Some(3)]
    );
    assert_eq!(two.set_entries().collect::<Vec<_>>(), vec![0, 1, 3]);
    let eight = read(&header(), &payload(8, &[0, 2, 0])).unwrap().list;
    assert_eq!(eight.set_entries().collect::<Vec<_>>(), vec![1]);
    assert_eq!(eight.status(u64::MAX), None);
}

#[test]
fn a_list_of_another_type_issuer_subject_or_past_its_exp_is_refused() {
    let good = payload(1, &[1]);
    assert!(read(&header(), &good).is_ok());
    let with = |key: &str, value: Value| {
        let mut p = good.clone();
        p[key] = value;
        p
    };
    assert_eq!(
        read(&serde_json::json!({"alg": "RS256", "typ": "JWT"}), &good),
        Err(ListError::WrongType)
    );
    assert_eq!(
        read(&serde_json::json!({"alg": "RS256"}), &good),
        Err(ListError::WrongType)
    );
    assert!(read(
        &serde_json::json!({"alg": "RS256", "typ": "application/statuslist+jwt"}),
        &good
    )
    .is_ok());
    assert_eq!(
        read(&header(), &with("iss", serde_json::json!("https://evil"))),
        Err(ListError::WrongIssuer)
    );
    assert_eq!(
        read(
            &header(),
            &with("sub", serde_json::json!("https://idp.unit/statuslists/2"))
        ),
        Err(ListError::WrongSubject)
    );
    // Fetched just now: no skew past `exp`, the rule a held list stops serving by.
    assert_eq!(
        read(&header(), &with("exp", serde_json::json!(NOW))),
        Err(ListError::Expired)
    );
    assert!(read(&header(), &with("exp", serde_json::json!(NOW + 1))).is_ok());
    assert_eq!(
        read(&header(), &good).map(|l| l.issued_at_ms),
        Ok((NOW as u64 - 5) * 1000),
        "its age counts from its iat"
    );
    assert!(matches!(
        read(&header(), &with("iat", serde_json::json!(NOW + 120))),
        Err(ListError::Malformed("iat in the future"))
    ));
    for (key, value) in [
        ("iat", serde_json::json!("yesterday")),
        ("ttl", serde_json::json!(-1)),
        (
            "status_list",
            serde_json::json!({"bits": 3, "lst": lst(&[1])}),
        ),
        (
            "status_list",
            serde_json::json!({"bits": 1, "lst": "not base64!"}),
        ),
        (
            "status_list",
            serde_json::json!({"bits": 1, "lst": URL_SAFE_NO_PAD.encode(b"raw")}),
        ),
    ] {
        assert!(
            matches!(
                read(&header(), &with(key, value.clone())),
                Err(ListError::Malformed(_))
            ),
            "{key}: {value}"
        );
    }
}

#[test]
fn a_list_that_inflates_past_its_bound_is_refused() {
    let bomb = vec![0u8; 10 << 20];
    let p = payload(1, &bomb);
    let read_with = |max_decoded_bytes| {
        read_list_token(
            &header(),
            p.to_string().as_bytes(),
            ISSUER,
            URI,
            NOW,
            60,
            ListBounds {
                max_decoded_bytes,
                max_set_entries: 100,
            },
        )
    };
    assert_eq!(read_with(1 << 20), Err(ListError::TooLarge));
    assert!(read_with(16 << 20).is_ok());
}

#[test]
fn a_list_with_more_entries_set_than_allowed_is_refused() {
    // 101 entries set (bits 1): one more than BOUNDS allows; 100 pass.
    let mut bytes = vec![0xffu8; 12];
    bytes.push(0b0001_1111);
    assert_eq!(
        read(&header(), &payload(1, &bytes)).map(|_| ()),
        Err(ListError::TooManySet)
    );
    let mut fewer = vec![0xffu8; 12];
    fewer.push(0b0000_1111);
    assert_eq!(
        read(&header(), &payload(1, &fewer)).map(|l| l.list.set_entries().count()),
        Ok(100)
    );
}

#[test]
fn an_introspected_jwt_s_status_is_read_from_its_payload() {
    let body = URL_SAFE_NO_PAD
        .encode(serde_json::json!({"status": {"status_list": {"idx": 3, "uri": URI}}}).to_string());
    let token = format!("eyJhbGciOiJSUzI1NiJ9.{body}.c2ln");
    let claims = jws_payload(&token).unwrap();
    assert_eq!(
        StatusRef::of_raw(&claims),
        Ok(Some(StatusRef {
            uri: URI.into(),
            index: 3
        }))
    );
    assert_eq!(jws_payload("opaque"), None);
    assert_eq!(jws_payload("a.b.c.d"), None);
}
