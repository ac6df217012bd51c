//! The replay harness (see `tests::replay`): a bounded run with invalidation on must show no
//! violation; the same run with the epochs poll off (and the unreachable-server fallback
//! pushed out of the way) must show violations, which proves the checker can fail.

use std::time::Duration;
use tests::replay::{run_replay, ReplayPlan};

#[test]
fn mixed_traffic_never_sees_a_stale_allow_past_the_documented_bounds() {
    let report = run_replay(&ReplayPlan {
        poll_interval_ms: 250,
        duration: Duration::from_millis(10_500),
        idp_down_at: Some(Duration::from_millis(3_500)),
        max_unreachable_ms: 2_000,
    });
    report.print();
    assert!(
        report.requests > 500,
        "too little traffic: {}",
        report.requests
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[test]
fn the_checker_catches_stale_allows_when_invalidation_is_off() {
    let report = run_replay(&ReplayPlan {
        poll_interval_ms: 0,
        duration: Duration::from_millis(3_500),
        idp_down_at: None,
        max_unreachable_ms: 60_000,
    });
    report.print();
    let caught = |name: &str| report.violations.iter().any(|v| v.starts_with(name));
    assert!(
        caught("revoked-token") && caught("revoked-subject"),
        "the checker missed stale allows: {:#?}",
        report.violations
    );
}
