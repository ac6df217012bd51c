//! Signs the same verification context many times with Ed25519 (the context signer) and with
//! ES256 (p256, the alternative JOSE services verify as widely), and prints microseconds per
//! signature as JSON, and what the RSA public-key operation of an `RS256` verification costs
//! (2048-bit key: the part of the filter's cold path that is arithmetic). Built for
//! wasm32-wasip1 and run under Node's WASI by `make bench`, so the numbers are V8's, the engine
//! Envoy runs the filter in.

use authz_context::{Binding, Claims, ContextSigner};
use p256::ecdsa::signature::Signer;
use std::time::Instant;

const ROUNDS: u32 = 2_000;

fn claims() -> Claims {
    Claims {
        iss: "authz".into(),
        aud: "orders".into(),
        sub: "alice".into(),
        sub_kind: "sub".into(),
        idp: "https://idp.example".into(),
        scope: "read write".into(),
        tier: "authenticated".into(),
        tenant: None,
        pv: 3,
        iat: 1_800_000_000,
        exp: 1_800_000_060,
        req: Binding {
            m: "GET".into(),
            r: "items".into(),
        },
        ext: serde_json::Map::new(),
    }
}

/// Microseconds per call: the fastest of ten batches after a warm-up (these machines share
/// their cores; the fastest batch is the one least disturbed).
fn per_signature_us(mut sign: impl FnMut() -> usize) -> f64 {
    let mut total = 0usize;
    for _ in 0..ROUNDS / 10 {
        total += sign();
    }
    let mut fastest = f64::MAX;
    for _ in 0..10 {
        let started = Instant::now();
        for _ in 0..ROUNDS / 10 {
            total += sign();
        }
        fastest = fastest.min(started.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS / 10));
    }
    std::hint::black_box(total);
    fastest
}

/// A 2048-bit RSA modulus (a dev key's), big-endian.
const MODULUS_2048_B64: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

/// Microseconds per RSA public-key operation (e = 65537) on a 2048-bit key, as the filter's
/// `RS256` verification runs it; None if the key does not load.
fn rsa_public_op_us() -> Option<f64> {
    use base64::Engine;
    let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(MODULUS_2048_B64)
        .ok()?;
    let key = authz_core::rsa_verify::RsaPublicKey::new(&modulus, &[1, 0, 1])?;
    let mut signature = modulus.clone();
    signature[0] >>= 1;
    let mut round = 0u8;
    Some(per_signature_us(|| {
        round = round.wrapping_add(1);
        signature[100] = round;
        key.public_op(&signature).map_or(0, |out| out.len())
    }))
}

fn main() {
    let ed25519 = ContextSigner::new("k1", &[7; 32]);
    let claims = claims();
    let ed = per_signature_us(|| ed25519.sign(&claims).len());
    let Ok(es_key) = p256::ecdsa::SigningKey::from_slice(&[7; 32]) else {
        eprintln!("p256 key refused");
        std::process::exit(1);
    };
    let payload = ed25519.sign(&claims);
    let es = per_signature_us(|| {
        let signature: p256::ecdsa::Signature = es_key.sign(payload.as_bytes());
        signature.to_bytes().len()
    });
    let Some(rsa) = rsa_public_op_us() else {
        eprintln!("rsa key refused");
        std::process::exit(1);
    };
    println!(
        "{}",
        serde_json::json!({"rounds": ROUNDS, "ed25519_us": ed, "es256_us": es, "rsa2048_public_op_us": rsa})
    );
}
