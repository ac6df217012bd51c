//! Signs the same verification context many times with Ed25519 (the context signer) and with
//! ES256 (p256, the alternative JOSE services verify as widely), and prints microseconds per
//! signature as JSON. Built for wasm32-wasip1 and run under Node's WASI by `make bench`, so the
//! numbers are V8's, the engine Envoy runs the filter in.

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

fn per_signature_us(mut sign: impl FnMut() -> usize) -> f64 {
    let mut total = 0usize;
    for _ in 0..ROUNDS / 10 {
        total += sign();
    }
    let started = Instant::now();
    for _ in 0..ROUNDS {
        total += sign();
    }
    let elapsed = started.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
    std::hint::black_box(total);
    elapsed
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
    println!(
        "{}",
        serde_json::json!({"rounds": ROUNDS, "ed25519_us": ed, "es256_us": es})
    );
}
