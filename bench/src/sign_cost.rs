//! What signing a verification context costs in Wasm: runs `bench/sign-cost` (built for
//! wasm32-wasip1) under Node's WASI, V8 like Envoy's Wasm runtime, and reads its
//! microseconds per signature for Ed25519 (the context's algorithm) and ES256, and per RSA
//! public-key operation (the arithmetic of an `RS256` verification, the filter's cold path).

use std::path::Path;
use std::process::Command;

/// Microseconds per signature, or why it could not be measured.
#[derive(Debug, Clone)]
pub struct SignCost {
    pub ed25519_us: f64,
    pub es256_us: f64,
    /// The RSA public-key operation of an `RS256` verification, 2048-bit key.
    pub rsa2048_public_op_us: f64,
}

/// Runs the measurement (`None`, with the reason printed, when Node or the module is missing).
pub fn run(repo: &Path) -> Option<SignCost> {
    let module = repo.join("target/wasm32-wasip1/release/sign-cost.wasm");
    let output = Command::new("node")
        .arg("--no-warnings")
        .arg(repo.join("bench/sign-cost/run-wasi.mjs"))
        .arg(&module)
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "sign cost: {}: {}",
                module.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!("sign cost: node: {e}");
            return None;
        }
    };
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let cost = SignCost {
        ed25519_us: value["ed25519_us"].as_f64()?,
        es256_us: value["es256_us"].as_f64()?,
        rsa2048_public_op_us: value["rsa2048_public_op_us"].as_f64()?,
    };
    eprintln!(
        "sign cost in Wasm: Ed25519 {:.1} µs, ES256 {:.1} µs; RSA-2048 public op {:.1} µs",
        cost.ed25519_us, cost.es256_us, cost.rsa2048_public_op_us
    );
    Some(cost)
}
