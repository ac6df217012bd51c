//! What revocations cost a proxy worker in memory: the target is at most 16 MiB per 100,000
//! revoked tokens, and entries leave when their tokens expire. Measured as the growth of this
//! process's resident memory while one worker's [`RevocationSet`] takes 100,000 token
//! revocations (allocator overhead included; the only test in its binary, so nothing else
//! allocates meanwhile). On the host, 64-bit: in Envoy's 32-bit Wasm VM pointers are half the
//! size, so the filter's cost is lower still. `make bench` measures Envoy itself.

use authz_core::revocations::{RevocationSet, FORGET_GRACE_MS};

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_hundred_thousand_revoked_tokens_fit_in_sixteen_mib_and_leave_when_they_expire() {
    let now = 1_900_000_000_000u64;
    let before = resident_kib();
    assert!(before > 0, "no VmRSS in /proc/self/status");
    let mut set = RevocationSet::new(1_000_000);
    for i in 0..100_000u32 {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&i.to_be_bytes());
        digest[4..8].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        // Tokens expiring over the next hour, as an IdP's would.
        let exp = now + u64::from(i % 3_600) * 1_000;
        set.revoke_token(digest, Some(exp), now);
    }
    assert_eq!(set.len(), 100_000);
    let grown_kib = resident_kib().saturating_sub(before);
    println!(
        "100000 revoked tokens: {:.1} MiB resident ({} bytes each)",
        grown_kib as f64 / 1024.0,
        grown_kib * 1024 / 100_000
    );
    assert!(
        grown_kib <= 16 * 1024,
        "{grown_kib} KiB for 100000 revocations"
    );
    // An hour (plus the grace) later every token has expired: nothing is held.
    assert_eq!(set.prune(now + 3_600 * 1_000 + FORGET_GRACE_MS), 100_000);
    assert!(set.is_empty());
}
